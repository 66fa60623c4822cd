//! Several models (`--model-dir`) and swaps without downtime (`POST
//! /v1/models/{name}/load`, SIGHUP), plus the confidence and entropy outputs. Needs
//! `lse-train` built (`cargo build --workspace`).

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;

/// Replaces `dst` with `src`'s bytes through a temporary file and a rename.
fn put(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("onnx.tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

fn model_ids(a: std::net::SocketAddr) -> Vec<(String, String)> {
    let r = get(a, "/v1/models").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().into(),
                m["id"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// One answer of the load: status, the model id it was made with, when it was sent.
type Answer = (u16, String, Instant);

/// Posts an image to /v1/segment from `n` threads until `stop`; each answer joins
/// `seen` as it comes.
fn hammer(
    a: std::net::SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Answer>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..n)
        .map(|k| {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let body = png(48, 32, k as u32);
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let r = post(a, "/v1/segment", &body);
                    let id = r.header("x-lse-model").unwrap_or("").to_string();
                    seen.lock().unwrap().push((r.status, id, sent));
                }
            })
        })
        .collect()
}

#[test]
fn model_dir_serves_every_folder_and_swaps_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_file, b_file) = (
        export_tiny(&tmp.path().join("a"), 7),
        export_tiny(&tmp.path().join("b"), 11),
    );
    let dir = tmp.path().join("models");
    for name in ["default", "other"] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
    }
    put(&a_file, &dir.join("default/model.onnx"));
    put(&b_file, &dir.join("other/model.onnx"));
    let token = tmp.path().join("admin-token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    let mut server = Server::start_in(
        None,
        false,
        &[
            "--model-dir",
            dir.to_str().unwrap(),
            "--queue",
            "256",
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
    );
    let a = server.addr;
    let ids = model_ids(a);
    assert_eq!(
        ids.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["default", "other"]
    );
    let (id_a, id_b) = (ids[0].1.clone(), ids[1].1.clone());
    assert_ne!(id_a, id_b);
    let r = post(a, "/v1/segment?model=other", &png(40, 30, 1));
    assert_eq!(r.header("x-lse-model"), Some(id_b.as_str()));
    post(a, "/v1/segment?model=nope", &png(40, 30, 1)).assert_error(404, "unknown_model");
    assert_eq!(get(a, "/v2/models/other/ready").unwrap().status, 200);

    // Swap `default` to model b while four clients keep posting.
    put(&b_file, &dir.join("default/model.onnx"));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let clients = hammer(a, 4, stop.clone(), seen.clone());
    let answered_after = |t: Instant| {
        let seen = seen.lock().unwrap();
        seen.iter().filter(|(_, _, sent)| *sent > t).count()
    };
    // Each client's answers before and after the swap: waited for, not timed.
    let started = Instant::now();
    wait_until("answers before the swap", || answered_after(started) >= 4);
    let r = send(a, "POST", "/v1/models/default/load", ADMIN, b"").unwrap();
    let swapped = Instant::now();
    wait_until("answers after the swap", || answered_after(swapped) >= 4);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let answers = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    // Ids are `<folder>-<file hash>`: `default` now has other's file.
    let hash = |id: &str| id.rsplit_once('-').map(|(_, h)| h.to_string());
    let new_id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(hash(&new_id), hash(&id_b));
    assert_eq!(r.json()["previous"].as_str(), Some(id_a.as_str()));
    let failed: Vec<_> = answers.iter().filter(|(s, _, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the swap: {failed:?}",
        failed.len(),
        answers.len()
    );
    assert!(
        answers.iter().any(|(_, id, t)| *id == id_a && *t < swapped),
        "no answer before the swap"
    );
    let after: Vec<_> = answers.iter().filter(|(_, _, t)| *t > swapped).collect();
    assert!(!after.is_empty(), "no request after the swap");
    assert!(
        after.iter().all(|(_, id, _)| *id == new_id),
        "answers after the swap: {after:?}"
    );

    // SIGHUP reloads the folder whose file changed back to model a.
    put(&a_file, &dir.join("default/model.onnx"));
    server.signal("HUP");
    wait_until("the reload on SIGHUP", || model_ids(a)[0].1 == id_a);
    assert_eq!(model_ids(a)[1].1, id_b, "the unchanged model stays");

    // Bad loads name the problem and leave the served model alone.
    let r = send(a, "POST", "/v1/models/missing/load", ADMIN, b"").unwrap();
    r.assert_error(404, "unknown_model");
    let r = send(a, "POST", "/v1/models/..%2Fx/load", ADMIN, b"").unwrap();
    r.assert_error(400, "bad_model_name");
    std::fs::write(dir.join("default/model.onnx"), b"not a model").unwrap();
    let r = send(a, "POST", "/v1/models/default/load", ADMIN, b"").unwrap();
    r.assert_error(422, "load_failed");
    assert_eq!(model_ids(a)[0].1, id_a);
    server.signal("TERM");
    assert!(server.wait_exit(HANG_GUARD).success());
}

/// Softmax confidence and normalised entropy of one pixel's logits, as 8-bit values.
fn expected(logits: &[f64]) -> (u8, u8) {
    let m = logits.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let s: f64 = e.iter().sum();
    let p: Vec<f64> = e.iter().map(|v| v / s).collect();
    let conf = p.iter().cloned().fold(0.0, f64::max);
    let ent = -p
        .iter()
        .filter(|&&v| v > 0.0)
        .map(|v| v * v.ln())
        .sum::<f64>()
        / (p.len() as f64).ln();
    ((conf * 255.0).round() as u8, (ent * 255.0).round() as u8)
}

#[test]
fn confidence_and_entropy_outputs() {
    let server = Server::start(&[]);
    let a = server.addr;
    // At the training size (64x32) nothing is upsampled: each pixel's values follow
    // from its logits, which the v2 `scores` output gives.
    let img = picture(64, 32, 3);
    let body = encode(&img, image::ImageFormat::Png);
    let maps: Vec<image::GrayImage> = ["confidence", "entropy"]
        .iter()
        .map(|o| {
            let r = post(a, &format!("/v1/segment?output={o}"), &body);
            assert_eq!(r.status, 200, "{}", r.text());
            let d = decode(&r.body);
            assert!(
                matches!(d, image::DynamicImage::ImageLuma8(_)),
                "{o}: 8-bit grey"
            );
            d.to_luma8()
        })
        .collect();
    let req = serde_json::json!({
        "inputs": [{"name": "image_rgb", "datatype": "UINT8", "shape": [32, 64, 3], "data": img.as_raw()}],
        "outputs": [{"name": "scores"}],
    });
    let r = post(a, "/v2/models/default/infer", req.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 19, 32, 64]));
    let scores: Vec<f64> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let mut worst = 0i32;
    for y in 0..32usize {
        for x in 0..64usize {
            let logits: Vec<f64> = (0..19).map(|k| scores[(k * 32 + y) * 64 + x]).collect();
            let (c, e) = expected(&logits);
            let got = (
                maps[0].get_pixel(x as u32, y as u32)[0],
                maps[1].get_pixel(x as u32, y as u32)[0],
            );
            worst = worst
                .max((got.0 as i32 - c as i32).abs())
                .max((got.1 as i32 - e as i32).abs());
        }
    }
    assert!(
        worst <= 1,
        "confidence/entropy differ from the logits' by {worst}"
    );
    let distinct: std::collections::BTreeSet<u8> = maps[0].pixels().map(|p| p[0]).collect();
    assert!(
        distinct.len() > 1,
        "a constant confidence map tests little: {distinct:?}"
    );
    // At another size the maps are upsampled to it.
    let r = post(a, "/v1/segment?output=entropy", &png(70, 50, 3));
    assert_eq!(decode(&r.body).to_luma8().dimensions(), (70, 50));
    let r = get(a, "/v1/model").unwrap();
    assert!(
        r.json()["server"]["outputs"]
            .as_str()
            .unwrap()
            .contains("entropy")
    );
}
