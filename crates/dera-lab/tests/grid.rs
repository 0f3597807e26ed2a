//! Lambda-grid parsing and shard splitting.

use dera_lab::sweep::{Shard, parse_axis, parse_grid};
use proptest::prelude::*;

#[test]
fn examples() {
    assert_eq!(
        parse_axis("0:1:0.1").unwrap(),
        vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    );
    assert_eq!(parse_axis("0:2:0.2").unwrap().len(), 11);
    assert_eq!(parse_axis("0.5, 1,2").unwrap(), vec![0.5, 1.0, 2.0]);
    assert_eq!(parse_axis("1:1:0.5").unwrap(), vec![1.0]);
    for bad in ["0:1:0.3", "0:1:0", "1:0:0.1", "0:1", "a,b", "", "0:1:-0.1"] {
        assert!(parse_axis(bad).is_err(), "{bad:?} should be rejected");
    }
    let g = parse_grid("0,1;0:1:0.5", 2).unwrap();
    assert_eq!(g.len(), 6);
    assert_eq!(g[0], vec![0.0, 0.0]);
    assert_eq!(g[5], vec![1.0, 1.0]);
    assert_eq!(parse_grid("0,1", 3).unwrap().len(), 8);
    assert!(parse_grid("0,1;0,1", 3).is_err());
}

proptest! {
    #[test]
    fn range_includes_endpoints_without_drift(start in -50i32..50, steps in 1usize..200, step_milli in 1u32..2000) {
        // Decimal inputs as a user types them: start, stop and step in thousandths.
        let start_milli = i64::from(start) * 100;
        let stop_milli = start_milli + steps as i64 * i64::from(step_milli);
        let step = f64::from(step_milli) / 1000.0;
        let start = start_milli as f64 / 1000.0;
        let stop = stop_milli as f64 / 1000.0;
        let spec = format!("{start}:{stop}:{step}");
        let v = parse_axis(&spec).unwrap();
        prop_assert_eq!(v.len(), steps + 1);
        prop_assert_eq!(v[0], start);
        prop_assert_eq!(*v.last().unwrap(), stop);
        for (i, x) in v.iter().enumerate() {
            // Each value is the decimal it should be, to 12 places.
            let want = start + i as f64 * step;
            prop_assert!((x - want).abs() < 1e-9, "{} vs {}", x, want);
            prop_assert_eq!(*x, (x * 1e12).round() / 1e12);
        }
        prop_assert!(v.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn shards_partition_the_prompts(len in 0usize..500, n in 1usize..17) {
        let mut seen = vec![0u32; len];
        for i in 0..n {
            let s = Shard::parse(&format!("{i}/{n}")).unwrap();
            for p in s.indices(len) {
                seen[p] += 1;
            }
        }
        prop_assert!(seen.iter().all(|&c| c == 1));
    }
}

#[test]
fn bad_shards() {
    for bad in ["3/3", "1/0", "x/2", "1"] {
        assert!(Shard::parse(bad).is_err(), "{bad}");
    }
}

/// The grid is limited in total, not only per axis, and the message gives its size.
#[test]
fn total_grid_size_is_limited_with_the_size_in_the_message() {
    // 101 values per axis: fine alone, 10201 vectors for two models.
    let e = parse_grid("0:100:1", 2).unwrap_err().to_string();
    assert!(
        e.contains("101 x 101 = 10201 lambda vectors; at most 10000"),
        "{e}"
    );
    let e = parse_grid("0:99999:1", 3).unwrap_err().to_string();
    assert!(e.contains("100000 x 100000 x 100000"), "{e}");
    assert_eq!(parse_grid("0:99:1", 2).unwrap().len(), 10_000);
    let e = dera_lab::sweep::check_size(10_000, 2)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("20000 sequences per prompt batch; at most 16384"),
        "{e}"
    );
    assert!(dera_lab::sweep::check_size(11, 0).is_err());
    dera_lab::sweep::check_size(11, 8).unwrap();
}
