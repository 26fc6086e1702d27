//! Measure the agent round trip: connect to a VM's cc socket and time
//! `exec "true"` SAMPLES times; print p50 and p99. Used by benches/cc-exec.sh.
//!
//! Usage: cc_rtt CC_SOCKET [SAMPLES]

use std::time::{Duration, Instant};

use megaplan::agent::AgentClient;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let sock = args.next().expect("usage: cc_rtt CC_SOCKET [SAMPLES]");
    let samples: usize = args
        .next()
        .map_or(200, |s| s.parse().expect("SAMPLES is a number"));
    let client = AgentClient::connect_timeout(&sock, Duration::from_secs(10))
        .await
        .expect("connect");
    client
        .wait_hello(Duration::from_secs(60))
        .await
        .expect("hello");
    // Warm up.
    for _ in 0..5 {
        client.exec("true", None).await.expect("exec");
    }
    let mut times: Vec<f64> = (0..samples).map(|_| 0.0).collect();
    for t in &mut times {
        let start = Instant::now();
        let r = client.exec("true", None).await.expect("exec");
        assert!(matches!(r.exit, megaplan::agent::Exit::Code(0)));
        *t = start.elapsed().as_secs_f64() * 1000.0;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "p50 {:.2} ms, p99 {:.2} ms, n={}",
        pct(0.50),
        pct(0.99),
        times.len()
    );
}
