//! Batches: images decoded and transformed in parallel (rayon) on a producer thread that runs
//! ahead of the trainer through a bounded queue.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rayon::prelude::*;

use super::DataError;
use super::folder::Item;
use super::transforms::{Transform, apply};

/// One batch: images `(n, 3, h, w)` on the CPU, their labels and their indices into the items.
#[derive(Debug)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Vec<u32>,
    pub indices: Vec<usize>,
}

/// Decodes any supported image to 8-bit RGB (grey, alpha and 16-bit images converted).
pub fn decode(path: &Path) -> Result<image::RgbImage, DataError> {
    let err = |message: String| DataError::Image { path: path.to_path_buf(), message };
    let reader = image::ImageReader::open(path).map_err(|e| err(e.to_string()))?;
    let reader = reader.with_guessed_format().map_err(|e| err(e.to_string()))?;
    Ok(reader.decode().map_err(|e| err(e.to_string()))?.to_rgb8())
}

/// The per-image random stream: fixed by (seed, epoch, image), independent of thread timing.
fn image_rng(seed: u64, epoch: u64, index: usize) -> rand_chacha::ChaCha8Rng {
    let mut s = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    s.set_stream(epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64);
    s
}

/// Produces batches of one split with one pipeline.
#[derive(Clone)]
pub struct Loader {
    items: Arc<Vec<Item>>,
    transforms: Arc<Vec<Transform>>,
    /// `(h, w)` every image must have after the transforms.
    pub input_hw: (usize, usize),
    pub batch_size: usize,
    pub prefetch: usize,
    pub skip_bad: bool,
    pub seed: u64,
}

impl Loader {
    pub fn new(items: Arc<Vec<Item>>, transforms: Vec<Transform>, input_hw: (usize, usize), batch_size: usize) -> Self {
        Self { items, transforms: Arc::new(transforms), input_hw, batch_size, prefetch: 2, skip_bad: false, seed: 0 }
    }

    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// One image through the pipeline.
    fn load(&self, index: usize, epoch: u64) -> Result<Vec<f32>, DataError> {
        let item = &self.items[index];
        let img = decode(&item.path)?;
        let mut rng = image_rng(self.seed, epoch, index);
        let (data, hw) = apply(&self.transforms, img, &mut rng)
            .map_err(|message| DataError::Image { path: item.path.clone(), message })?;
        if hw != self.input_hw {
            return Err(DataError::Image {
                path: item.path.clone(),
                message: format!(
                    "is {}x{} after the transforms, the model expects {}x{}: add a resize or crop",
                    hw.0, hw.1, self.input_hw.0, self.input_hw.1
                ),
            });
        }
        Ok(data)
    }

    fn make_batch(&self, chunk: &[usize], epoch: u64) -> Result<Option<Batch>, DataError> {
        let loaded: Vec<(usize, Result<Vec<f32>, DataError>)> =
            chunk.par_iter().map(|&i| (i, self.load(i, epoch))).collect();
        let (h, w) = self.input_hw;
        let mut data = Vec::with_capacity(chunk.len() * 3 * h * w);
        let (mut labels, mut indices) = (Vec::new(), Vec::new());
        for (i, result) in loaded {
            match result {
                Ok(pixels) => {
                    data.extend_from_slice(&pixels);
                    labels.push(self.items[i].label.unwrap_or(0) as u32);
                    indices.push(i);
                }
                Err(e) if self.skip_bad => eprintln!("warning: skipping {e}"),
                Err(e) => return Err(e),
            }
        }
        if indices.is_empty() {
            return Ok(None);
        }
        let images = Tensor::from_vec(data, (indices.len(), 3, h, w), &Device::Cpu)
            .map_err(|e| DataError::Image { path: self.items[chunk[0]].path.clone(), message: e.to_string() })?;
        Ok(Some(Batch { images, labels, indices }))
    }

    /// Batches over `order` (indices into the items) for `epoch`, produced ahead on a
    /// background thread. The last batch may be smaller.
    pub fn batches(&self, order: Vec<usize>, epoch: u64) -> Batches {
        let (tx, rx) = sync_channel(self.prefetch.max(1));
        let this = self.clone();
        let handle = std::thread::spawn(move || {
            for chunk in order.chunks(this.batch_size.max(1)) {
                let batch = this.make_batch(chunk, epoch);
                let stop = batch.is_err();
                match batch {
                    Ok(None) => continue,
                    Ok(Some(b)) => {
                        if tx.send(Ok(b)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
                if stop {
                    return;
                }
            }
        });
        Batches { rx, handle: Some(handle) }
    }
}

/// Iterator over prefetched batches; dropping it stops the producer.
pub struct Batches {
    rx: Receiver<Result<Batch, DataError>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for Batches {
    type Item = Result<Batch, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // Close the queue first so a producer blocked on `send` wakes up and exits.
        let (_, dead) = sync_channel(1);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
