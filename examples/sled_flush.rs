//! The write yardstick for `bench/run.sh`: raw sled 0.34, one thread, each insert
//! followed by a flush (the durability one HTTP write promises), for a given time.
//!
//! `sled_flush DIR SECONDS` prints `inserts_per_second N`.

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, seconds] = args.as_slice() else {
        eprintln!("usage: sled_flush DIR SECONDS");
        std::process::exit(2);
    };
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(64 << 20)
        .open()?;
    let tree = db.open_tree("images")?;
    let value =
        br#"{"id":"bench-00000000","provider":"ec2","remote_user":"ubuntu","name":"bench image"}"#;
    let budget = Duration::from_secs_f64(seconds.parse()?);
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < budget {
        tree.insert(format!("bench-{count:08}"), &value[..])?;
        db.flush()?;
        count += 1;
    }
    println!(
        "inserts_per_second {:.0}",
        count as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}
