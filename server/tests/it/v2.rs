//! The Open Inference Protocol (KServe v2) over HTTP and gRPC, driven by the official
//! Triton clients (`tritonclient[http,grpc]` in .venv, installed by scripts/setup.sh)
//! from tests/triton_clients.py, plus the protocol's error answers over raw HTTP.
//! Needs `lse-train` and `lse` built (`cargo build --workspace`).

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;
use lse_test_support::{ok, python};

#[test]
fn official_clients_agree_with_v1_and_lse_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for seed in 0..3 {
        let p = dir.path().join(format!("img{seed}.png"));
        std::fs::write(&p, png(72, 40, seed + 20)).unwrap();
        images.push(p);
    }
    let out = dir.path().join("lse");
    let mut args = vec!["segment".to_string(), path_str(model())];
    args.extend(images.iter().map(|p| path_str(p)));
    args.extend(["--out".to_string(), path_str(&out)]);
    ok(
        &workspace_bin("lse"),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let labels: Vec<_> = (0..images.len())
        .map(|i| out.join(format!("img{i}_labelIds.png")))
        .collect();
    let server = Server::start(&["--grpc-addr", "127.0.0.1:0", "--batch-wait-ms", "20"]);
    let grpc = server.grpc.expect("the gRPC address is printed");
    let args = serde_json::json!({
        "http": server.addr.to_string(),
        "grpc": grpc.to_string(),
        "images": images,
        "labels": labels,
        "classes": 19,
        "train_size": [64, 32],
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/triton_clients.py");
    let r = Command::new(python())
        .arg(script)
        .arg(args.to_string())
        .output()
        .expect("run python");
    assert!(
        r.status.success(),
        "tritonclient checks failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
        server.log_text()
    );
}

#[test]
fn v2_errors_are_protocol_json() {
    let server = Server::start(&[]);
    let a = server.addr;
    let r = get(a, "/v2/health/live").unwrap();
    assert_eq!(r.status, 200);
    let r = get(a, "/v2/models/default/versions/2").unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("version `2`"));
    let infer = "/v2/models/default/infer";
    let r = post(a, infer, b"{not json");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    // The binary part is shorter than the input claims.
    let head = br#"{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":100}}]}"#;
    let mut body = head.to_vec();
    body.extend_from_slice(&[1, 0, 0, 0, 7]);
    let n = head.len().to_string();
    let r = send(
        a,
        "POST",
        infer,
        &[("Inference-Header-Content-Length", &n)],
        &body,
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("declares 100 bytes"),
        "{}",
        r.text()
    );
    // Pixel values out of the UINT8 range, and a shape that disagrees with the data.
    let body =
        br#"{"inputs":[{"name":"image_rgb","shape":[1,1,3],"datatype":"UINT8","data":[1,2,300]}]}"#;
    let r = post(a, infer, body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("300"),
        "{}",
        r.text()
    );
    let body =
        br#"{"inputs":[{"name":"image_rgb","shape":[2,1,3],"datatype":"UINT8","data":[1,2,3]}]}"#;
    let r = post(a, infer, body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().contains("6 values"),
        "{}",
        r.text()
    );
    // A JSON request for one tiny image answers with JSON data.
    let body = br#"{"inputs":[{"name":"image_rgb","shape":[2,2,3],"datatype":"UINT8","data":[[[1,2,3],[4,5,6]],[[7,8,9],[10,11,12]]]}],"outputs":[{"name":"labels","parameters":{"ids":"train"}}]}"#;
    let r = post(a, infer, body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 2, 2]));
    assert_eq!(v["outputs"][0]["data"].as_array().unwrap().len(), 4);
    assert_eq!(v["model_name"], "default");
}
