//! Guessing tokens: after too many refused tokens from one address, the real daemon refuses
//! that address outright for the lockout, audits it, and lets it in again afterwards.

use std::time::Duration;

mod e2e;
use e2e::*;

#[test]
fn refused_tokens_lock_the_address_out_for_a_while_and_are_audited() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let config = base.path().join("cadang.toml");
    std::fs::write(
        &config,
        "[daemon]\nlisten = \"127.0.0.1:0\"\nauth_max_failures = 4\nauth_failure_window_secs = 60\nauth_lockout_secs = 3\n[scheduler]\ntick_secs = 1\nlease_secs = 5\n",
    )
    .unwrap();
    let admin = Daemon::bootstrap(&data, &[]);
    let daemon = Daemon::start(&data, &[], Some(&config));
    let server = daemon.url();
    ok(&server, &admin, &["agency", "list"]);

    // Calls without any token are not guesses and do not count.
    for _ in 0..6 {
        let out = cli(&server, "", &["agency", "list"]);
        assert!(!out.status.success());
    }
    ok(&server, &admin, &["agency", "list"]);

    // Three guesses are refused one by one; the fourth starts the lockout.
    let guess = |n: u8| format!("cdg_{}", format!("{n:02x}").repeat(32));
    for n in 0..4 {
        refused(&server, &guess(n), &["agency", "list"], "UNAUTHENTICATED");
    }
    let locked = refused(
        &server,
        &guess(9),
        &["agency", "list"],
        "RESOURCE_EXHAUSTED",
    );
    assert!(
        locked.contains("too many failed authentications from 127.0.0.1"),
        "{locked}"
    );
    // While it lasts, even a valid token from that address is turned away unexamined.
    refused(&server, &admin, &["agency", "list"], "RESOURCE_EXHAUSTED");

    std::thread::sleep(Duration::from_millis(3500));
    ok(&server, &admin, &["agency", "list"]);

    // The lockout is in the audit trail, the chain intact, and no guess is written down.
    let out = cli(&server, &admin, &["audit", "export"]);
    assert!(out.status.success());
    let trail = String::from_utf8_lossy(&out.stdout);
    let lockouts: Vec<&str> = trail
        .lines()
        .filter(|l| l.contains("auth.lockout"))
        .collect();
    assert_eq!(lockouts.len(), 1, "{trail}");
    assert!(
        lockouts[0].contains("127.0.0.1") && lockouts[0].contains("failures"),
        "{}",
        lockouts[0]
    );
    ok(&server, &admin, &["audit", "verify"]);

    // Guessed enrolment tokens count the same way.
    let state = base.path().join("agent-state");
    for n in 0..4 {
        let out = enroll(
            &server,
            &format!("cdge_{}", format!("{n:02x}").repeat(32)),
            &state,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("not known"),
            "{stderr}"
        );
    }
    refused(&server, &admin, &["agency", "list"], "RESOURCE_EXHAUSTED");
    std::thread::sleep(Duration::from_millis(3500));
    let out = cli(&server, &admin, &["audit", "export"]);
    let trail = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        trail.lines().filter(|l| l.contains("auth.lockout")).count(),
        2
    );

    let log = std::fs::read(data.with_extension("log")).unwrap_or_default();
    let on_disk = [bytes_under(&data), log].concat();
    for n in [0u8, 1, 2, 3, 9] {
        let guess = guess(n);
        assert!(
            !on_disk.windows(guess.len()).any(|w| w == guess.as_bytes()),
            "a guessed token was written down"
        );
    }
}
