//! `medvlp label --convention chexpert|strict`: the two conventions differ where
//! docs/labeler-conventions.md says they do, chexpert is the default, and a bad value is refused.

mod common;

use common::{medvlp, tempdir};

fn label(input: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let o = medvlp()
        .args(["label", "--no-entities", "--input"])
        .arg(input)
        .arg("--output")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn conventions_differ_where_documented() {
    let tmp = tempdir("label-convention");
    let input = tmp.join("reports.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"id\": \"congestion\", \"text\": \"FINDINGS: Mild pulmonary vascular congestion.\"}\n",
            "{\"id\": \"borderline\", \"text\": \"Heart size is at the upper limits of normal.\"}\n",
            "{\"id\": \"infection\", \"text\": \"Right lower lobe opacity consistent with infection.\"}\n",
            "{\"id\": \"indication\", \"text\": \"INDICATION: ___ with CHF.\\n\\nFINDINGS: No pleural effusion.\"}\n",
        ),
    )
    .unwrap();
    let (c_out, s_out) = (tmp.join("chexpert.jsonl"), tmp.join("strict.jsonl"));
    let (ok, err) = label(&input, &c_out, &[]);
    assert!(ok && err.contains("chexpert convention"), "{err}");
    let (ok, err) = label(&input, &s_out, &["--convention", "strict"]);
    assert!(ok && err.contains("strict convention"), "{err}");
    let (c, s) = (lines(&c_out), lines(&s_out));
    assert_eq!(c[0]["labels"]["Edema"], 1);
    assert!(s[0]["labels"].get("Edema").is_none(), "{}", s[0]);
    let pvc = "Pulmonary Vascular Congestion";
    assert_eq!((c[0]["labels"][pvc].as_i64(), s[0]["labels"][pvc].as_i64()), (Some(1), Some(1)));
    let cm = "Cardiomegaly";
    assert_eq!((c[1]["labels"][cm].as_i64(), s[1]["labels"][cm].as_i64()), (Some(-1), Some(1)));
    assert_eq!(c[2]["labels"]["Pneumonia"], 1);
    assert!(s[2]["labels"].get("Pneumonia").is_none(), "{}", s[2]);
    // The indication describes the request: its CHF is no edema under either convention.
    for l in [&c[3], &s[3]] {
        assert!(l["labels"].get("Edema").is_none(), "{l}");
        assert_eq!(l["labels"]["Pleural Effusion"], 0);
    }

    let (ok, err) = label(&input, &tmp.join("x.jsonl"), &["--convention", "naming"]);
    assert!(!ok && err.contains("--convention must be chexpert or strict"), "{err}");
}
