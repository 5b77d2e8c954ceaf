//! Helpers shared by the end-to-end trainer tests: the tiny reference CNN, a
//! generated class-folder data set, a fast base configuration, and byte-level
//! readers for run directories.

#![allow(dead_code)] // each test binary uses a different subset

use koala_train::TrainConfig;
use std::path::{Path, PathBuf};

/// `tests/fixtures/reference/tiny_cnn/model.onnx` at the workspace root:
/// input `input` [batch,3,16,16], output `logits` [batch,10] from a Gemm head.
pub fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/reference/tiny_cnn/model.onnx")
}

/// Classes of the generated data set.
pub const CLASSES: usize = 4;

/// Writes a class-folder data set under `root`: `per_class` small PNGs per
/// class (`class_0` … `class_3`), each a class-specific colour plus a
/// deterministic per-image pattern, so the classes are learnable and no two
/// images are equal. Sizes vary (18–21 px) so resizing to 16 is exercised.
pub fn write_class_folders(root: &Path, per_class: usize) {
    let palette = [
        [200u8, 40, 40],
        [40, 200, 40],
        [40, 40, 200],
        [200, 200, 40],
    ];
    for (c, colour) in palette.iter().enumerate().take(CLASSES) {
        let dir = root.join(format!("class_{c}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let size = 18 + (i % 4) as u32;
            let img = image::RgbImage::from_fn(size, size, |x, y| {
                let wobble = ((x * 7 + y * 13 + i as u32 * 31) % 48) as u8;
                image::Rgb(colour.map(|v| v.saturating_sub(24).saturating_add(wobble)))
            });
            img.save(dir.join(format!("img_{i:03}.png"))).unwrap();
        }
    }
}

/// A temporary directory holding a generated data set in `data/`
/// ([`write_class_folders`] with `per_class` images per class).
pub fn scratch_with_data(per_class: usize) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_class_folders(&data, per_class);
    (tmp, data)
}

/// A configuration that trains the tiny CNN quickly and reproducibly: 16×16
/// input, batch 4, one ORT thread (bitwise determinism), no augmentation
/// randomness beyond the seeded loader, constant learning rate.
pub fn fast_config(data: &Path, run_dir: &Path) -> TrainConfig {
    TrainConfig {
        model: tiny_model(),
        data: data.to_path_buf(),
        image_size: koala_train::config::ImageSize::square(16),
        batch_size: 4,
        val_fraction: 0.25,
        threads: Some(1),
        log_every: 1,
        run_dir: run_dir.to_path_buf(),
        seed: 7,
        ..TrainConfig::default()
    }
}

/// Bytes of `<checkpoint dir>/weights.safetensors` for `step` in `run_dir`.
pub fn checkpoint_weights(run_dir: &Path, step: u64) -> Vec<u8> {
    let p = run_dir.join(format!("checkpoints/step-{step:08}/weights.safetensors"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// Copies a directory tree (checkpoints are small flat trees).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// What a process killed right after writing checkpoint `step` leaves
/// behind (config.toml and that checkpoint), copied into `to`.
pub fn interrupted_copy(from: &Path, to: &Path, step: u64) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("config.toml"), to.join("config.toml")).unwrap();
    let name = format!("checkpoints/step-{step:08}");
    copy_dir(&from.join(&name), &to.join(&name));
}

/// Steps of the complete checkpoints of a run.
pub fn checkpoint_steps(run_dir: &Path) -> Vec<u64> {
    koala_train::checkpoint::list(run_dir)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}
