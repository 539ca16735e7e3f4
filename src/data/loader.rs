//! Batches: images decoded and transformed in parallel (rayon) on a producer thread that runs
//! ahead of the trainer through a bounded queue.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rayon::prelude::*;

use super::DataError;
use super::folder::Item;
use super::transforms::{Transform, apply_image, deterministic_prefix, to_tensor};

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

/// Decoded images after a pipeline's deterministic prefix (resize, centre crop), kept in
/// memory as u8 so later epochs decode nothing. Loaders whose pipelines share the prefix
/// share one cache.
pub struct ImageCache {
    prefix: Vec<Transform>,
    slots: Vec<OnceLock<Arc<image::RgbImage>>>,
    /// Images decoded so far (a test and the log read it).
    pub decodes: AtomicUsize,
}

impl ImageCache {
    /// A cache for `n` items under the deterministic prefix of `pipeline`.
    pub fn new(n: usize, pipeline: &[Transform]) -> Self {
        let prefix = pipeline[..deterministic_prefix(pipeline)].to_vec();
        Self { prefix, slots: (0..n).map(|_| OnceLock::new()).collect(), decodes: AtomicUsize::new(0) }
    }

    /// Whether this cache holds what `pipeline`'s prefix produces.
    pub fn fits(&self, pipeline: &[Transform]) -> bool {
        pipeline[..deterministic_prefix(pipeline)] == self.prefix[..]
    }

    fn get(&self, index: usize, path: &Path) -> Result<Arc<image::RgbImage>, DataError> {
        if let Some(img) = self.slots[index].get() {
            return Ok(img.clone());
        }
        self.decodes.fetch_add(1, Ordering::Relaxed);
        // The prefix is deterministic: no random numbers are drawn.
        let mut no_rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let img = apply_image(&self.prefix, decode(path)?, &mut no_rng)
            .map_err(|message| DataError::Image { path: path.to_path_buf(), message })?;
        // Two threads may race on one image; either result is the same.
        Ok(self.slots[index].get_or_init(|| Arc::new(img)).clone())
    }
}

/// Produces batches of one split with one pipeline.
#[derive(Clone)]
pub struct Loader {
    items: Arc<Vec<Item>>,
    transforms: Arc<Vec<Transform>>,
    cache: Option<Arc<ImageCache>>,
    /// `(h, w)` every image must have after the transforms.
    pub input_hw: (usize, usize),
    pub batch_size: usize,
    pub prefetch: usize,
    pub skip_bad: bool,
    pub seed: u64,
}

impl Loader {
    pub fn new(items: Arc<Vec<Item>>, transforms: Vec<Transform>, input_hw: (usize, usize), batch_size: usize) -> Self {
        Self {
            items,
            transforms: Arc::new(transforms),
            cache: None,
            input_hw,
            batch_size,
            prefetch: 2,
            skip_bad: false,
            seed: 0,
        }
    }

    /// Reads images through `cache`, which must have been made for this pipeline's prefix.
    pub fn with_cache(mut self, cache: Arc<ImageCache>) -> Self {
        assert!(cache.fits(&self.transforms), "an image cache made for another pipeline");
        assert_eq!(cache.slots.len(), self.items.len(), "an image cache made for other items");
        self.cache = Some(cache);
        self
    }

    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// One image through the pipeline.
    fn load(&self, index: usize, epoch: u64) -> Result<Vec<f32>, DataError> {
        let item = &self.items[index];
        let mut rng = image_rng(self.seed, epoch, index);
        let img = match &self.cache {
            Some(cache) => {
                let rest = &self.transforms[deterministic_prefix(&self.transforms)..];
                apply_image(rest, cache.get(index, &item.path)?.as_ref().clone(), &mut rng)
            }
            None => apply_image(&self.transforms, decode(&item.path)?, &mut rng),
        }
        .map_err(|message| DataError::Image { path: item.path.clone(), message })?;
        let (data, hw) = to_tensor(&img, &self.transforms);
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
