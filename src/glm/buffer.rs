//! Per-run ring buffers of realigned voxels.
//!
//! In: realigned, masked volumes in index order, explicit gaps, and late
//! arrivals. Out: the most recent `capacity` frames of each run, oldest
//! first, each a row of voxels in the session mask's `np.where` order —
//! what the GLM reads. Memory is fixed by `capacity × voxels` per run kept,
//! however long the run: the oldest frame is overwritten (and its
//! allocation reused) once the ring is full.

use std::collections::BTreeMap;

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::types::messages::{IngestEvent, PipelineEvent};

/// Ring buffer settings (`[buffer]` in the config file).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    /// Frames kept per run (600 = 15 min at TR 1.5 s).
    pub capacity: usize,
    /// Runs kept in memory (the current one and the ones before it).
    pub keep_runs: usize,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            capacity: 600,
            keep_runs: 2,
        }
    }
}

/// One time point of a run.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Volume index.
    pub index: u32,
    /// False for a volume that never arrived (data is zeros).
    pub present: bool,
    /// Filled in after its slot had been declared missing.
    pub late: bool,
    /// Masked voxels, `np.where` order.
    pub data: Vec<f32>,
}

/// The ring of one run.
pub struct RunBuffer {
    run: u32,
    voxels: usize,
    // Both ends of one ring, owned together: the stage that writes frames
    // is also the one that reads them (the GLM), so no sharing is needed.
    prod: HeapProd<Frame>,
    ring: HeapCons<Frame>,
    evicted: u64,
    spare: Option<Vec<f32>>,
}

impl std::fmt::Debug for RunBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunBuffer")
            .field("run", &self.run)
            .field("voxels", &self.voxels)
            .field("frames", &self.ring.occupied_len())
            .field("capacity", &self.ring.capacity())
            .field("evicted", &self.evicted)
            .finish()
    }
}

impl RunBuffer {
    /// An empty ring of `capacity` frames of `voxels` values.
    pub fn new(run: u32, capacity: usize, voxels: usize) -> RunBuffer {
        let (prod, ring) = HeapRb::new(capacity.max(1)).split();
        RunBuffer {
            run,
            voxels,
            prod,
            ring,
            evicted: 0,
            spare: None,
        }
    }

    /// Run number.
    pub fn run(&self) -> u32 {
        self.run
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.ring.occupied_len()
    }

    /// True when no frame is held.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Maximum frames held.
    pub fn capacity(&self) -> usize {
        self.ring.capacity().get()
    }

    /// Frames dropped off the old end so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn push_frame(&mut self, index: u32, present: bool, late: bool, values: Option<&[f32]>) {
        let mut data = self.spare.take().unwrap_or_default();
        data.clear();
        match values {
            Some(v) => data.extend_from_slice(v),
            None => data.resize(self.voxels, 0.0),
        }
        if self.prod.is_full()
            && let Some(old) = self.ring.try_pop()
        {
            self.evicted += 1;
            self.spare = Some(old.data);
        }
        let pushed = self.prod.try_push(Frame {
            index,
            present,
            late,
            data,
        });
        debug_assert!(pushed.is_ok(), "a slot was freed above");
    }

    /// Append a realigned volume.
    pub fn push(&mut self, index: u32, values: &[f32]) {
        self.push_frame(index, true, false, Some(values));
    }

    /// Append a placeholder for a volume that did not arrive.
    pub fn push_missing(&mut self, index: u32) {
        self.push_frame(index, false, false, None);
    }

    /// Fill the placeholder of a late volume. Returns false when its slot
    /// has already left the ring (or never existed), in which case the late
    /// volume is appended if it is newer than everything held.
    pub fn fill_late(&mut self, index: u32, values: &[f32]) -> bool {
        if let Some(frame) = self.ring.iter_mut().find(|f| f.index == index) {
            frame.data.clear();
            frame.data.extend_from_slice(values);
            frame.present = true;
            frame.late = true;
            return true;
        }
        let newest = self.ring.iter().map(|f| f.index).max();
        if newest.is_none_or(|n| index > n) {
            self.push_frame(index, true, true, Some(values));
            return true;
        }
        false
    }

    /// Frames oldest first.
    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        self.ring.iter()
    }

    /// Frames newest first.
    pub fn frames_rev(&self) -> impl Iterator<Item = &Frame> {
        self.ring.iter().rev()
    }

    /// The frame of volume `index`, if held.
    pub fn get(&self, index: u32) -> Option<&Frame> {
        self.ring.iter().find(|f| f.index == index)
    }
}

/// The ring buffers of the runs kept in memory.
#[derive(Debug)]
pub struct RunBuffers {
    config: BufferConfig,
    voxels: usize,
    runs: BTreeMap<u32, RunBuffer>,
}

impl RunBuffers {
    /// No runs yet; rings are sized once the mask is known.
    pub fn new(config: BufferConfig) -> RunBuffers {
        RunBuffers {
            config,
            voxels: 0,
            runs: BTreeMap::new(),
        }
    }

    /// The ring of `run`, if kept.
    pub fn run(&self, run: u32) -> Option<&RunBuffer> {
        self.runs.get(&run)
    }

    /// Runs kept, oldest first.
    pub fn runs(&self) -> impl Iterator<Item = &RunBuffer> {
        self.runs.values()
    }

    fn ring(&mut self, run: u32) -> &mut RunBuffer {
        if !self.runs.contains_key(&run) {
            while self.runs.len() >= self.config.keep_runs.max(1) {
                let Some((&oldest, _)) = self.runs.iter().next() else {
                    break;
                };
                if oldest > run {
                    break;
                }
                self.runs.remove(&oldest);
            }
        }
        let (cap, vox) = (self.config.capacity, self.voxels);
        self.runs
            .entry(run)
            .or_insert_with(|| RunBuffer::new(run, cap, vox))
    }

    /// Update from one pipeline event.
    pub fn handle(&mut self, event: &PipelineEvent) {
        match event {
            PipelineEvent::ReferenceReady { mask_voxels, .. } => self.voxels = *mask_voxels,
            PipelineEvent::Realigned(r) => {
                let ring = self.ring(r.key.run);
                if r.late {
                    if !ring.fill_late(r.key.index, &r.masked) {
                        tracing::warn!(
                            "{}: late volume is older than the ring buffer holds; kept only in the session store",
                            r.key
                        );
                    }
                } else {
                    ring.push(r.key.index, &r.masked);
                }
            }
            PipelineEvent::RealignFailed { key, .. } => self.ring(key.run).push_missing(key.index),
            PipelineEvent::Ingest(IngestEvent::Missing { key, .. }) => {
                self.ring(key.run).push_missing(key.index)
            }
            PipelineEvent::Ingest(_)
            | PipelineEvent::Beta(_)
            | PipelineEvent::TrialSkipped { .. }
            | PipelineEvent::Feedback(_)
            | PipelineEvent::Notice(_)
            | PipelineEvent::DecoderReady(_)
            | PipelineEvent::Decoded(_)
            | PipelineEvent::Reconstructed(_)
            | PipelineEvent::DecodeSkipped { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_frames_and_reuses_memory() {
        let mut rb = RunBuffer::new(1, 3, 2);
        for i in 0..5u32 {
            rb.push(i, &[i as f32, -(i as f32)]);
        }
        let idx: Vec<u32> = rb.frames().map(|f| f.index).collect();
        assert_eq!(idx, vec![2, 3, 4]);
        assert_eq!(rb.evicted(), 2);
        assert_eq!(rb.get(4).unwrap().data, vec![4.0, -4.0]);
        assert!(rb.get(1).is_none());
    }

    #[test]
    fn gaps_hold_a_slot_that_a_late_volume_fills() {
        let mut rb = RunBuffer::new(1, 10, 2);
        rb.push(0, &[1.0, 1.0]);
        rb.push_missing(1);
        rb.push(2, &[3.0, 3.0]);
        assert!(!rb.get(1).unwrap().present);
        assert!(rb.fill_late(1, &[2.0, 2.0]));
        let f = rb.get(1).unwrap();
        assert!(f.present && f.late);
        assert_eq!(f.data, vec![2.0, 2.0]);
        let order: Vec<u32> = rb.frames().map(|f| f.index).collect();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[test]
    fn only_the_configured_number_of_runs_is_kept() {
        let mut b = RunBuffers::new(BufferConfig {
            capacity: 4,
            keep_runs: 2,
        });
        b.voxels = 1;
        for run in 1..=3 {
            b.ring(run).push(0, &[run as f32]);
        }
        let runs: Vec<u32> = b.runs().map(|r| r.run()).collect();
        assert_eq!(runs, vec![2, 3]);
    }
}
