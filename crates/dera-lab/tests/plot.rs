//! Figures: SVG and PNG output, layout, and no half-written files.

use dera_lab::plot::{Chart, Format, Series, Style, check_path, svg, write};

fn charts(n: usize) -> Vec<Chart> {
    (0..n)
        .map(|i| Chart {
            title: format!("panel {i}"),
            x_label: "lambda".into(),
            y_label: "reward".into(),
            series: vec![
                Series {
                    label: "DeRa".into(),
                    points: vec![(0.0, -0.8), (1.0, -0.6), (2.0, f64::NAN), (2.0, -0.3)],
                    style: Style::Line,
                },
                Series {
                    label: "retrained".into(),
                    points: vec![(0.5, -0.5)],
                    style: Style::Points,
                },
            ],
        })
        .collect()
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn png_has_three_panels_per_row_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/fig.png");
    write(&path, &charts(5), false).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(png_size(&bytes), (3 * 420, 2 * 320));
    // Not a blank canvas: text and lines were drawn in several colours.
    assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("fig.png")]);

    // An existing figure is replaced only with force.
    let e = write(&path, &charts(2), false).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(png_size(&std::fs::read(&path).unwrap()), (3 * 420, 2 * 320));
    write(&path, &charts(2), true).unwrap();
    assert_eq!(png_size(&std::fs::read(&path).unwrap()), (2 * 420, 320));
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );
}

#[test]
fn svg_wraps_panels_and_escapes_text() {
    let mut c = charts(4);
    c[0].title = "KL(a || b) < 1 & more".into();
    let s = svg(&c);
    assert!(s.contains(r#"width="1260" height="640""#), "{}", &s[..200]);
    assert_eq!(s.matches("<g transform=").count(), 4);
    assert!(s.contains("KL(a || b) &lt; 1 &amp; more"));
    assert!(!s.contains("NaN"));
}

#[test]
fn unknown_extensions_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(check_path("a.svg".as_ref()).unwrap(), Format::Svg);
    assert_eq!(check_path("a.png".as_ref()).unwrap(), Format::Png);
    for name in ["fig.pdf", "fig", "fig.svg.bak"] {
        let p = dir.path().join(name);
        let e = write(&p, &charts(1), true).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains(".png"), "{e}");
        assert!(!p.exists());
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
