//! Batches: images decoded and transformed in parallel (rayon) on a producer thread that runs
//! ahead of the trainer through a bounded queue.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rayon::prelude::*;

use super::DataError;
use super::folder::Item;
use super::transforms::{Transform, apply_image, apply_tensor, deterministic_prefix, to_tensor};

/// One batch: images `(n, 3, h, w)` on the CPU, their labels and their indices into the items.
#[derive(Debug)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Vec<u32>,
    pub indices: Vec<usize>,
}

/// Decodes any supported image to 8-bit RGB (grey, alpha and 16-bit images converted). An
/// image of more than `max_pixels` pixels is refused from its header, before it is decoded;
/// so is a truncated JPEG (whose missing rows the decoder would fill with grey, where PIL
/// refuses it). A file that cannot be read is an [`DataError::Io`], the rest
/// [`DataError::Image`].
pub fn decode(path: &Path, max_pixels: u64) -> Result<image::RgbImage, DataError> {
    use image::ImageDecoder;
    let bad = |message: String| DataError::Image { path: path.to_path_buf(), message };
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        operation: "read".into(),
        message: e.to_string(),
    })?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    let format = reader.format();
    let decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(bad(format!(
            "it is {w}x{h} = {} pixels, more than data.max_pixels = {max_pixels}",
            u64::from(w) * u64::from(h)
        )));
    }
    if format == Some(image::ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        return Err(bad("the JPEG is truncated (its data ends before the end-of-image marker)".into()));
    }
    Ok(image::DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?.to_rgb8())
}

/// Whether a JPEG's last scan is followed by its end-of-image marker (`FF D9`). Inside a scan
/// every `FF` data byte is stuffed (`FF 00`), so the marker cannot appear there by chance; one
/// in an embedded thumbnail comes before the first scan (`FF DA`). The decoder itself accepts
/// a file cut short, which is why this is checked by hand.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let end = bytes.windows(2).rposition(|w| w == [0xFF, 0xD9]);
    matches!((last_scan, end), (Some(s), Some(e)) if e > s)
}

/// The per-image random stream: fixed by (seed, epoch, image), independent of thread timing.
fn image_rng(seed: u64, epoch: u64, index: usize) -> rand_chacha::ChaCha8Rng {
    let mut s = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    s.set_stream(epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64);
    s
}

/// Decoded images after a pipeline's deterministic prefix (resize, centre crop), kept as u8
/// so later epochs decode nothing: in memory, or in a file on disk. Loaders whose pipelines
/// share the prefix share one cache.
pub struct ImageCache {
    prefix: Vec<Transform>,
    store: Store,
    /// Images decoded so far (a test and the log read it).
    pub decodes: AtomicUsize,
}

enum Store {
    Memory(Vec<OnceLock<image::RgbImage>>),
    Disk(DiskStore),
}

/// Images appended to one file as they are first decoded, read back with positioned reads.
/// (Not a memory map: the file grows while the first epoch runs, and positioned reads go
/// through the same page cache without remapping; the kernel keeps what fits in RAM.)
struct DiskStore {
    path: PathBuf,
    file: std::fs::File,
    /// End of the data written so far; the lock also serialises the appends.
    end: Mutex<u64>,
    /// Where each image lies: offset, width, height.
    slots: Vec<OnceLock<(u64, u32, u32)>>,
}

impl DiskStore {
    fn read(&self, (offset, w, h): (u64, u32, u32)) -> std::io::Result<image::RgbImage> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; w as usize * h as usize * 3];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(image::RgbImage::from_raw(w, h, buf).expect("the buffer holds w * h * 3 bytes"))
    }

    fn append(&self, img: &image::RgbImage) -> std::io::Result<(u64, u32, u32)> {
        use std::os::unix::fs::FileExt;
        let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
        self.file.write_all_at(img.as_raw(), *end)?;
        let at = *end;
        *end += img.as_raw().len() as u64;
        Ok((at, img.width(), img.height()))
    }
}

impl Drop for DiskStore {
    /// The file is only good for this process's run: remove it (it can be gigabytes).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ImageCache {
    /// An in-memory cache for `n` items under the deterministic prefix of `pipeline`.
    pub fn new(n: usize, pipeline: &[Transform]) -> Self {
        let prefix = pipeline[..deterministic_prefix(pipeline)].to_vec();
        let store = Store::Memory((0..n).map(|_| OnceLock::new()).collect());
        Self { prefix, store, decodes: AtomicUsize::new(0) }
    }

    /// A cache for `n` items in a new file under `dir`, named by a hash of the prefix
    /// (`images-<hash>.u8`); the file is removed when the cache is dropped.
    pub fn on_disk(n: usize, pipeline: &[Transform], dir: &Path) -> std::io::Result<Self> {
        let prefix = pipeline[..deterministic_prefix(pipeline)].to_vec();
        std::fs::create_dir_all(dir)?;
        // FNV-1a of the prefix's description: one file per distinct prefix.
        let key = format!("{prefix:?}")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let path = dir.join(format!("images-{key:016x}.u8"));
        // A file left by a killed earlier attempt (a resume) is stale: start it afresh.
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        let store =
            Store::Disk(DiskStore { path, file, end: Mutex::new(0), slots: (0..n).map(|_| OnceLock::new()).collect() });
        Ok(Self { prefix, store, decodes: AtomicUsize::new(0) })
    }

    /// Whether this cache holds what `pipeline`'s prefix produces.
    pub fn fits(&self, pipeline: &[Transform]) -> bool {
        pipeline[..deterministic_prefix(pipeline)] == self.prefix[..]
    }

    fn len(&self) -> usize {
        match &self.store {
            Store::Memory(slots) => slots.len(),
            Store::Disk(d) => d.slots.len(),
        }
    }

    fn decode_prefix(&self, path: &Path, max_pixels: u64) -> Result<image::RgbImage, DataError> {
        self.decodes.fetch_add(1, Ordering::Relaxed);
        // The prefix is deterministic: no random numbers are drawn.
        let mut no_rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        apply_image(&self.prefix, decode(path, max_pixels)?, &mut no_rng)
            .map_err(|message| DataError::Image { path: path.to_path_buf(), message })
    }

    /// The image after the prefix, owned (the rest of the pipeline transforms it in place).
    fn get(&self, index: usize, path: &Path, max_pixels: u64) -> Result<image::RgbImage, DataError> {
        let io = |operation: &str, cache: &Path, e: std::io::Error| DataError::Io {
            path: cache.to_path_buf(),
            operation: format!("{operation} (image {})", path.display()),
            message: e.to_string(),
        };
        match &self.store {
            Store::Memory(slots) => {
                if let Some(img) = slots[index].get() {
                    return Ok(img.clone());
                }
                let img = self.decode_prefix(path, max_pixels)?;
                // Two threads may race on one image; either result is the same.
                Ok(slots[index].get_or_init(|| img).clone())
            }
            Store::Disk(disk) => {
                if let Some(&at) = disk.slots[index].get() {
                    return disk.read(at).map_err(|e| io("read the image cache", &disk.path, e));
                }
                let img = self.decode_prefix(path, max_pixels)?;
                let at = disk.append(&img).map_err(|e| io("write the image cache", &disk.path, e))?;
                // A racing thread's copy is written too but never read: harmless.
                disk.slots[index].get_or_init(|| at);
                Ok(img)
            }
        }
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
    /// Skip the images that cannot be used ([`DataError::is_bad_image`]) with a warning.
    pub skip_bad: bool,
    pub seed: u64,
    /// Images of more pixels are refused (see [`decode`]).
    pub max_pixels: u64,
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
            max_pixels: crate::spec::DEFAULT_MAX_PIXELS,
        }
    }

    /// Reads images through `cache`, which must have been made for this pipeline's prefix.
    pub fn with_cache(mut self, cache: Arc<ImageCache>) -> Self {
        assert!(cache.fits(&self.transforms), "an image cache made for another pipeline");
        assert_eq!(cache.len(), self.items.len(), "an image cache made for other items");
        self.cache = Some(cache);
        self
    }

    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The same items and settings through another pipeline (without a cache), for a test-time
    /// variant of each image.
    pub fn with_transforms(&self, transforms: Vec<Transform>) -> Self {
        Self { transforms: Arc::new(transforms), cache: None, ..self.clone() }
    }

    /// One image through the pipeline.
    fn load(&self, index: usize, epoch: u64) -> Result<Vec<f32>, DataError> {
        let item = &self.items[index];
        let mut rng = image_rng(self.seed, epoch, index);
        let img = match &self.cache {
            Some(cache) => {
                let rest = &self.transforms[deterministic_prefix(&self.transforms)..];
                apply_image(rest, cache.get(index, &item.path, self.max_pixels)?, &mut rng)
            }
            None => apply_image(&self.transforms, decode(&item.path, self.max_pixels)?, &mut rng),
        }
        .map_err(|message| DataError::Image { path: item.path.clone(), message })?;
        let (mut data, hw) = to_tensor(&img, &self.transforms);
        if hw != self.input_hw {
            return Err(DataError::Image {
                path: item.path.clone(),
                message: format!(
                    "is {}x{} after the transforms, the model expects {}x{}: add a resize or crop",
                    hw.0, hw.1, self.input_hw.0, self.input_hw.1
                ),
            });
        }
        apply_tensor(&self.transforms, &mut data, hw, &mut rng)
            .map_err(|message| DataError::Image { path: item.path.clone(), message })?;
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
                Err(e) if self.skip_bad && e.is_bad_image() => eprintln!("warning: skipping {e}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A failing write of the image cache (here a real ENOSPC from `/dev/full`) stops the
    /// loader naming the cache file, the image and the operation, even with `skip_bad`: it is
    /// the machine's error, not the image's.
    #[test]
    fn an_io_error_is_never_skipped_and_names_the_file_and_operation() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("1.png");
        image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3])).save(&img).unwrap();
        let items = Arc::new(vec![Item { path: img.clone(), label: Some(0), id: "1".into() }]);
        let pipeline = vec![Transform::Resize((4, 4))];
        let full = std::fs::OpenOptions::new().read(true).write(true).open("/dev/full").unwrap();
        let store = Store::Disk(DiskStore {
            path: tmp.path().join("images.u8"),
            file: full,
            end: Mutex::new(0),
            slots: vec![OnceLock::new()],
        });
        let cache = Arc::new(ImageCache { prefix: pipeline.clone(), store, decodes: AtomicUsize::new(0) });
        let mut loader = Loader::new(items, pipeline, (4, 4), 1).with_cache(cache);
        loader.skip_bad = true;
        let err = loader.batches(vec![0], 0).next().unwrap().unwrap_err();
        assert!(!err.is_bad_image());
        let text = err.to_string();
        assert!(text.contains("cannot write the image cache (image ") && text.contains("1.png"), "{text}");
        assert!(text.contains("images.u8") && text.contains("No space left on device"), "{text}");
        // A file that is not an image is the image's error, which skip_bad may skip.
        std::fs::write(&img, b"not an image").unwrap();
        assert!(decode(&img, u64::MAX).unwrap_err().is_bad_image());
    }
}
