//! Key rotation under load: keep-alive clients keep sending while the key
//! file is rotated through kubelet-style symlink swaps.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const ROTATIONS: usize = 50;
const CLIENTS: usize = 3;
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const SETTLE_DELAY: Duration = Duration::from_millis(20);
/// Allowance for a busy two-core machine on top of poll interval plus settle delay.
const SCHEDULING_SLACK: Duration = Duration::from_secs(1);

fn key(index: usize) -> String {
    format!("rotation-key-{index:04}-0123456789abcdef")
}

/// Swaps a Secret-volume-style directory to contain `keys`, as the kubelet does.
fn swap(dir: &Path, generation: usize, keys: &[String]) {
    let name = format!("..gen_{generation:04}");
    fs::create_dir(dir.join(&name)).unwrap();
    fs::write(dir.join(&name).join("keys"), keys.join("\n") + "\n").unwrap();
    let old = fs::read_link(dir.join("..data")).ok();
    symlink(&name, dir.join("..data_tmp")).unwrap();
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if let Some(old) = old {
        fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// One request as a client saw it.
struct Sample {
    key_index: usize,
    sent: Instant,
    received: Instant,
    status: u16,
}

/// Times at which each key entered and left the file.
#[derive(Default, Clone, Copy)]
struct Presence {
    added: Option<Instant>,
    removed: Option<Instant>,
}

fn run_client(
    address: std::net::SocketAddr,
    current: &AtomicUsize,
    stop: &AtomicBool,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut stream = connect(address);
    while !stop.load(Ordering::Relaxed) {
        let key_index = current.load(Ordering::SeqCst);
        let sent = Instant::now();
        let request = format!(
            "GET / HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n",
            key(key_index)
        );
        let response = stream
            .write_all(request.as_bytes())
            .ok()
            .and_then(|_| read_response(&mut stream, false));
        match response {
            Some(response) => samples.push(Sample {
                key_index,
                sent,
                received: Instant::now(),
                status: response.status,
            }),
            None => stream = connect(address),
        }
    }
    samples
}

#[test]
fn rotation_under_load_never_denies_present_key() {
    let dir = TempDir::new("rotation");
    swap(dir.path(), 0, &[key(0)]);
    symlink("..data/keys", dir.join("keys")).unwrap();

    let poll = format!("{}ms", POLL_INTERVAL.as_millis());
    let settle = format!("{}ms", SETTLE_DELAY.as_millis());
    let keygate = Keygate::start(
        &dir.join("keys"),
        &["--poll-interval", &poll, "--settle-delay", &settle],
    );

    let presence = Arc::new(Mutex::new(vec![Presence::default(); ROTATIONS + 1]));
    presence.lock().unwrap()[0].added = Some(Instant::now());
    let current = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (current, stop, address) = (Arc::clone(&current), Arc::clone(&stop), keygate.auth);
            thread::spawn(move || run_client(address, &current, &stop))
        })
        .collect();

    let mut max_removal_delay = Duration::ZERO;
    let mut max_addition_delay = Duration::ZERO;
    for rotation in 0..ROTATIONS {
        let (old, new) = (rotation, rotation + 1);

        // Step 1: add the new key next to the old one.
        swap(dir.path(), 2 * rotation + 1, &[key(old), key(new)]);
        let added = Instant::now();
        presence.lock().unwrap()[new].added = Some(added);
        assert!(
            eventually_status(keygate.auth, Some(&key(new)), 200, Duration::from_secs(5)),
            "rotation {rotation}: new key never allowed"
        );
        max_addition_delay = max_addition_delay.max(added.elapsed());

        // Step 2: move the clients over, and let them use the new key a little.
        current.store(new, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(50));

        // Step 3: remove the old key and measure until it is denied.
        swap(dir.path(), 2 * rotation + 2, &[key(new)]);
        let removed = Instant::now();
        presence.lock().unwrap()[old].removed = Some(removed);
        assert!(
            eventually_status(keygate.auth, Some(&key(old)), 401, Duration::from_secs(5)),
            "rotation {rotation}: old key never denied"
        );
        max_removal_delay = max_removal_delay.max(removed.elapsed());
    }

    stop.store(true, Ordering::Relaxed);
    let samples: Vec<Sample> = clients
        .into_iter()
        .flat_map(|client| client.join().unwrap())
        .collect();
    let presence = presence.lock().unwrap();

    let mut wrongly_denied = 0;
    for sample in &samples {
        let Presence { added, removed } = presence[sample.key_index];
        let present_throughout = added.is_some_and(|added| added <= sample.sent)
            && removed.is_none_or(|removed| removed >= sample.received);
        if present_throughout && sample.status != 200 {
            wrongly_denied += 1;
        }
    }

    println!(
        "{} requests over {ROTATIONS} rotations; longest addition-to-effect {max_addition_delay:?}, longest removal-to-effect {max_removal_delay:?}",
        samples.len()
    );
    assert!(
        samples.len() > ROTATIONS * CLIENTS,
        "clients barely ran: {} requests",
        samples.len()
    );
    assert_eq!(
        wrongly_denied, 0,
        "requests denied while their key was in the file"
    );
    let bound = POLL_INTERVAL + SETTLE_DELAY + SCHEDULING_SLACK;
    assert!(
        max_removal_delay <= bound,
        "a removed key stayed valid for {max_removal_delay:?}, more than {bound:?}"
    );
    assert!(
        !keygate.logs().contains("rotation-key-"),
        "a key reached the log"
    );
}
