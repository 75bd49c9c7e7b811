//! The throughput case: burst ingest with the receiver holding every request, the backlog
//! drained, then a steady offered rate.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::env_u64;
use crate::harness::{
    Relay, Sink, bench_schema, drop_schema, load, metrics_text, percentile, postgres_cpu,
    queue_depth,
};

/// Burst, drain and steady phases of one store, fan-out and relay count.
pub async fn case(sync: &str, fanout: usize, replicas: usize) {
    let name = if replicas > 1 {
        format!("store={sync} fanout={fanout} replicas={replicas}")
    } else {
        format!("store={sync} fanout={fanout}")
    };
    let dir = tempfile::tempdir().unwrap();
    let pg_cpu = postgres_cpu();
    let (sink, sink_addr) = Sink::serve(true).await;
    let epoch = sink.epoch;
    let subs: String = (0..fanout)
        .map(|i| {
            format!(
                "  - {{name: s{i}, url: 'http://{sink_addr}/s{i}', events: ['*'], max_in_flight: 256, timeout: 30s, retries: 20}}\n"
            )
        })
        .collect();
    let relays: Vec<Relay> = (0..replicas)
        .map(|i| Relay::start(dir.path(), i, sync, &subs))
        .collect();
    let apps: Vec<String> = relays.iter().map(|r| r.app.clone()).collect();
    // The store's queue depth is the same from every relay; ask the first.
    let ops = relays[0].ops.clone();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // Burst ingest with the receiver paused.
    let burst = Duration::from_secs(env_u64("BENCH_BURST_SECS", 10));
    let t0 = Instant::now();
    let (accepted, refused, lat) = load(&apps, "bench.event", epoch, t0 + burst, 0).await;
    let took = t0.elapsed().as_secs_f64();
    println!(
        "{name} burst: accepted {:.0}/s ({accepted} in {took:.1}s, {refused} refused), accept latency p50 {:.2} ms p99 {:.2} ms",
        accepted as f64 / took,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    // Drain the backlog before the steady phase.
    sink.paused.store(false, Ordering::SeqCst);
    sink.resume.notify_waiters();
    let drain = Instant::now();
    while queue_depth(&http, &ops).await > 0.0 && drain.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "{name} drain: {} deliveries of the burst in {:.1}s ({:.0}/s)",
        sink.delivered.load(Ordering::Relaxed),
        drain.elapsed().as_secs_f64(),
        sink.delivered.load(Ordering::Relaxed) as f64 / drain.elapsed().as_secs_f64()
    );

    // Steady state at the target delivery rate.
    let target = if fanout == 1 {
        env_u64("BENCH_RATE_FANOUT1", 15_000)
    } else {
        env_u64("BENCH_RATE_FANOUT10", 25_000)
    };
    let event_rate = (target / fanout as u64).max(1);
    let steady = Duration::from_secs(env_u64("BENCH_STEADY_SECS", 60));
    sink.latencies_us.lock().unwrap().clear();
    let delivered_before = sink.delivered.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let until = t0 + steady;
    let sampler = {
        let http = http.clone();
        let ops = ops.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_secs(5)).await;
                samples.push(queue_depth(&http, &ops).await);
            }
            samples
        })
    };
    let (accepted, refused, lat) = load(&apps, "bench.event", epoch, until, event_rate).await;
    let took = t0.elapsed().as_secs_f64();
    let delivered = sink.delivered.load(Ordering::Relaxed) - delivered_before;
    let depths = sampler.await.unwrap();
    let mut e2e = sink.latencies_us.lock().unwrap().clone();
    e2e.sort_unstable();
    let (rss, cpu) = relays
        .iter()
        .map(Relay::usage)
        .fold((0, 0.0), |(rss, cpu), (r, c)| (rss.max(r), cpu + c));
    let mut metrics = Vec::new();
    for relay in &relays {
        metrics.push(metrics_text(&http, &relay.ops).await);
    }
    // Each relay's own counters, summed.
    let value = |name: &str| -> f64 {
        metrics
            .iter()
            .flat_map(|m| m.lines())
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    println!(
        "{name} store: {:.0} transactions, mean {:.2} ms each, mean {:.1} jobs each",
        value("hookrelay_store_commit_duration_seconds_count"),
        1000.0 * value("hookrelay_store_commit_duration_seconds_sum")
            / value("hookrelay_store_commit_duration_seconds_count"),
        value("hookrelay_store_batch_size_sum") / value("hookrelay_store_batch_size_count"),
    );
    let tail = &depths[depths.len().saturating_sub(depths.len() * 3 / 4 + 1)..];
    let spread = tail.iter().cloned().fold(f64::MIN, f64::max)
        - tail.iter().cloned().fold(f64::MAX, f64::min);
    let flat =
        spread <= target as f64 * 0.5 && tail.last().copied().unwrap_or(0.0) <= target as f64;
    println!(
        "{name} steady: offered {event_rate} events/s ({target} deliveries/s) for {took:.0}s: accepted {:.0}/s ({refused} refused), delivered {:.0}/s, accept p50 {:.2} ms p99 {:.2} ms, event-to-delivery p50 {:.2} ms p99 {:.2} ms, queue depth samples {:?} -> {}",
        accepted as f64 / took,
        delivered as f64 / took,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&e2e, 0.5),
        percentile(&e2e, 0.99),
        depths,
        if flat {
            "flat"
        } else {
            "GROWING (target not met)"
        }
    );
    println!(
        "{name} relay: peak RSS {:.1} MiB (the largest relay), CPU {cpu:.1} s over the case (all relays)",
        rss as f64 / 1048576.0
    );
    if sync == "postgres" {
        println!(
            "{name} PostgreSQL server: CPU {:.1} s over the case",
            postgres_cpu() - pg_cpu
        );
        drop(relays);
        drop_schema(&bench_schema(dir.path())).await;
    }
}
