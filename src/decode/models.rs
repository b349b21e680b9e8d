//! A model folder and a subject folder, loaded and checked, as the two
//! halves the decode stage runs.
//!
//! In: the manifests and a [`Runtime`]. Out: a [`FastPath`] (adapter →
//! backbone → retrieval top-k) and a [`Reconstructor`] (prior sampler →
//! decoder → image), each owning its graphs so they can live on different
//! threads. Loading checks every graph against its manifest entry; a
//! mismatch is an error here, before the session starts.

use std::path::Path;
use std::time::Instant;

use super::error::ModelError;
use super::manifest::{
    DecoderIo, DecoderSampler, DiscreteKind, ModelManifest, Prediction, PriorSpec, SubjectManifest,
};
use super::retrieval::{Bank, Candidate};
use super::runtime::{Graph, Input, Runtime};
use super::sampler::{
    Denoise, DiscreteRun, DiscreteSchedule, EulerRun, Level, NoiseSource, SeededNoise,
    sample_discrete, sample_euler,
};
use super::tensor::{Dtype, TensorSpec};

/// Time one graph call took inside ONNX Runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphTime {
    /// Role (`adapter`, `backbone`, `prior`, `decoder`, `latent_decoder`).
    pub role: &'static str,
    /// Seconds.
    pub seconds: f64,
}

/// What the fast path produced for one beta.
#[derive(Debug, Clone)]
pub struct FastOutput {
    /// The adapter's shared latent.
    pub latent: Vec<f32>,
    /// The backbone's tokens.
    pub tokens: Vec<f32>,
    /// The retrieval query (the retrieval head, or the tokens).
    pub query: Vec<f32>,
    /// The low-level latent, when the backbone has that head.
    pub lowlevel: Option<Vec<f32>>,
    /// Best candidates, best first (empty without a bank).
    pub top: Vec<Candidate>,
    /// Per-graph ONNX Runtime time.
    pub graphs: Vec<GraphTime>,
    /// Wall time of the whole fast path, seconds.
    pub wall_seconds: f64,
    /// Voxels that were not finite and were fed as 0.
    pub nonfinite_voxels: usize,
}

/// Adapter + backbone + retrieval.
pub struct FastPath {
    subject: SubjectManifest,
    adapter: Graph,
    backbone: Graph,
    bank: Option<Bank>,
    top_k: usize,
    has_retrieval_head: bool,
    has_lowlevel: bool,
    input: Vec<f32>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("subject", &self.subject.subject)
            .field("voxels", &self.subject.voxels)
            .finish()
    }
}

/// One reconstruction.
#[derive(Debug, Clone)]
pub struct Reconstruction {
    /// Image, channel-major `[C, H, W]`, values nominally in [0, 1].
    pub image: Vec<f32>,
    /// `(C, H, W)`.
    pub chw: (usize, usize, usize),
    /// The prior's sample (the decoder's conditioning).
    pub prior_tokens: Vec<f32>,
    /// Seed of the prior's noise.
    pub prior_seed: u64,
    /// Seed of the decoder's noise.
    pub decoder_seed: u64,
    /// ONNX Runtime seconds per prior step (guided steps sum both passes).
    pub prior_steps: Vec<f64>,
    /// ONNX Runtime seconds per decoder step (one entry for a one-pass decoder).
    pub decoder_steps: Vec<f64>,
    /// ONNX Runtime seconds of the latent decoder (0 for one pass).
    pub latent_decoder_seconds: f64,
    /// Wall time of the whole reconstruction, seconds.
    pub wall_seconds: f64,
}

impl Reconstruction {
    /// Seconds ONNX Runtime spent executing graphs.
    pub fn graph_seconds(&self) -> f64 {
        self.prior_steps.iter().sum::<f64>()
            + self.decoder_steps.iter().sum::<f64>()
            + self.latent_decoder_seconds
    }
}

// One per session, never moved in a hot loop.
#[allow(clippy::large_enum_variant)]
enum DecoderGraphs {
    Onepass(Graph),
    Diffusion {
        denoiser: Graph,
        latent_decoder: Graph,
        latent_len: usize,
        prediction: Prediction,
        sampler: DecoderSampler,
        noise_dtype: Dtype,
    },
}

/// Prior sampler + decoder.
pub struct Reconstructor {
    prior: Option<(Graph, PriorSpec, DiscreteSchedule)>,
    decoder: DecoderGraphs,
    token_len: usize,
    chw: (usize, usize, usize),
    seed_override: Option<u64>,
}

impl std::fmt::Debug for Reconstructor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconstructor")
            .field("chw", &self.chw)
            .finish()
    }
}

/// Both halves, loaded.
#[derive(Debug)]
pub struct ModelSet {
    /// The model manifest.
    pub manifest: ModelManifest,
    /// Adapter + backbone + retrieval.
    pub fast: FastPath,
    /// Prior + decoder, when the model has a decoder.
    pub recon: Option<Reconstructor>,
}

fn level_input(dtype: Dtype, level: Level, i: &mut [i64; 1], f: &mut [f32; 1]) -> Dtype {
    match level {
        Level::Timestep(t) => {
            i[0] = t;
            f[0] = t as f32;
        }
        Level::Sigma(s) => {
            i[0] = s.round() as i64;
            f[0] = s as f32;
        }
    }
    dtype
}

fn timed(graphs: &mut Vec<GraphTime>, role: &'static str, seconds: f64) {
    graphs.push(GraphTime { role, seconds });
}

impl ModelSet {
    /// Load and check both folders. `seed` overrides the manifest's seeds.
    pub fn load(
        rt: &Runtime,
        model: &Path,
        subject: &Path,
        seed: Option<u64>,
    ) -> Result<ModelSet, ModelError> {
        let manifest = ModelManifest::load(model)?;
        let subject = SubjectManifest::load(subject)?;
        subject.check_against(&manifest)?;
        let adapter = rt.load_graph(
            "adapter",
            &subject.adapter.file,
            vec![subject.adapter.input.clone()],
            vec![subject.adapter.output.clone()],
        )?;
        let b = &manifest.backbone;
        let mut outs = vec![b.tokens.clone()];
        outs.extend(b.retrieval.clone());
        outs.extend(b.lowlevel.clone());
        let backbone = rt.load_graph("backbone", &b.file, vec![b.input.clone()], outs)?;
        let bank = match &manifest.retrieval {
            Some(r) => Some(Bank::load(r, manifest.query_len())?),
            None => None,
        };
        let fast = FastPath {
            top_k: manifest.retrieval.as_ref().map_or(0, |r| r.top_k),
            has_retrieval_head: b.retrieval.is_some(),
            has_lowlevel: b.lowlevel.is_some(),
            input: vec![0.0; subject.voxels],
            subject,
            adapter,
            backbone,
            bank,
        };
        let recon = Reconstructor::load(rt, &manifest, seed)?;
        Ok(ModelSet {
            manifest,
            fast,
            recon,
        })
    }

    /// Split into the halves the decode stage runs on two threads.
    pub fn split(self) -> (FastPath, Option<Reconstructor>) {
        (self.fast, self.recon)
    }
}

impl FastPath {
    /// The subject.
    pub fn subject(&self) -> &SubjectManifest {
        &self.subject
    }

    /// The bank, when there is one.
    pub fn bank(&self) -> Option<&Bank> {
        self.bank.as_ref()
    }

    /// The adapter and backbone graphs.
    pub fn graphs(&self) -> [&Graph; 2] {
        [&self.adapter, &self.backbone]
    }

    /// The adapter and backbone graphs, mutably (warm-up).
    pub fn graphs_mut(&mut self) -> [&mut Graph; 2] {
        [&mut self.adapter, &mut self.backbone]
    }

    /// Run on one beta (the subject's voxel order).
    pub fn run(&mut self, voxels: &[f32]) -> Result<FastOutput, ModelError> {
        let t0 = Instant::now();
        if voxels.len() != self.subject.voxels {
            return Err(ModelError::VoxelCount {
                subject: self.subject.subject.clone(),
                adapter: self.subject.voxels,
                mask: voxels.len(),
            });
        }
        let mut nonfinite = 0;
        for (d, &v) in self.input.iter_mut().zip(voxels) {
            *d = if v.is_finite() {
                v
            } else {
                nonfinite += 1;
                0.0
            };
        }
        let mut graphs = Vec::with_capacity(2);
        let mut latent = Vec::new();
        let s = self
            .adapter
            .run(&[Input::F32(&self.input)], &mut [&mut latent])?;
        timed(&mut graphs, "adapter", s);
        let mut tokens = Vec::new();
        let mut retrieval = Vec::new();
        let mut lowlevel = Vec::new();
        let s = {
            let mut outs: Vec<&mut Vec<f32>> = vec![&mut tokens];
            if self.has_retrieval_head {
                outs.push(&mut retrieval);
            }
            if self.has_lowlevel {
                outs.push(&mut lowlevel);
            }
            self.backbone.run(&[Input::F32(&latent)], &mut outs)?
        };
        timed(&mut graphs, "backbone", s);
        let query = if self.has_retrieval_head {
            retrieval
        } else {
            tokens.clone()
        };
        let top = self
            .bank
            .as_ref()
            .map(|b| b.top_k(&query, self.top_k))
            .unwrap_or_default();
        Ok(FastOutput {
            latent,
            tokens,
            query,
            lowlevel: self.has_lowlevel.then_some(lowlevel),
            top,
            graphs,
            wall_seconds: t0.elapsed().as_secs_f64(),
            nonfinite_voxels: nonfinite,
        })
    }
}

impl Reconstructor {
    fn load(
        rt: &Runtime,
        m: &ModelManifest,
        seed: Option<u64>,
    ) -> Result<Option<Reconstructor>, ModelError> {
        let Some(io) = m.decoder_io()? else {
            return Ok(None);
        };
        let prior = match &m.prior {
            Some(p) => {
                let g = rt.load_graph(
                    "prior",
                    &p.file,
                    vec![p.sample.clone(), p.timestep.clone(), p.cond.clone()],
                    vec![p.output.clone()],
                )?;
                Some((g, p.clone(), DiscreteSchedule::new(&p.schedule)))
            }
            None => None,
        };
        let decoder = match io {
            DecoderIo::Onepass {
                file,
                input,
                output,
            } => DecoderGraphs::Onepass(rt.load_graph(
                "decoder",
                &file,
                vec![input],
                vec![output],
            )?),
            DecoderIo::Diffusion {
                file,
                sample,
                noise,
                cond,
                output,
                prediction,
                latent_file,
                latent_in,
                image_out,
                sampler,
            } => {
                let latent_len = sample.len();
                let noise_dtype = noise.dtype;
                DecoderGraphs::Diffusion {
                    denoiser: rt.load_graph(
                        "decoder",
                        &file,
                        vec![sample, noise, cond],
                        vec![output],
                    )?,
                    latent_decoder: rt.load_graph(
                        "latent_decoder",
                        &latent_file,
                        vec![latent_in],
                        vec![image_out],
                    )?,
                    latent_len,
                    prediction,
                    sampler,
                    noise_dtype,
                }
            }
        };
        let chw = m.image_chw().unwrap_or((3, 1, 1));
        Ok(Some(Reconstructor {
            prior,
            decoder,
            token_len: m.backbone.tokens.len(),
            chw,
            seed_override: seed,
        }))
    }

    /// Every graph it runs.
    pub fn graphs(&self) -> Vec<&Graph> {
        let mut g: Vec<&Graph> = self.prior.iter().map(|(g, _, _)| g).collect();
        match &self.decoder {
            DecoderGraphs::Onepass(d) => g.push(d),
            DecoderGraphs::Diffusion {
                denoiser,
                latent_decoder,
                ..
            } => {
                g.push(denoiser);
                g.push(latent_decoder);
            }
        }
        g
    }

    /// Every graph it runs, mutably (warm-up).
    pub fn graphs_mut(&mut self) -> Vec<&mut Graph> {
        let mut g: Vec<&mut Graph> = self.prior.iter_mut().map(|(g, _, _)| g).collect();
        match &mut self.decoder {
            DecoderGraphs::Onepass(d) => g.push(d),
            DecoderGraphs::Diffusion {
                denoiser,
                latent_decoder,
                ..
            } => {
                g.push(denoiser);
                g.push(latent_decoder);
            }
        }
        g
    }

    /// Image `(C, H, W)`.
    pub fn chw(&self) -> (usize, usize, usize) {
        self.chw
    }

    /// The seeds a reconstruction uses: (prior, decoder).
    pub fn seeds(&self) -> (u64, u64) {
        let prior = self.prior.as_ref().map_or(0, |(_, p, _)| p.sampler.seed);
        let decoder = match &self.decoder {
            DecoderGraphs::Diffusion {
                sampler: DecoderSampler::Euler { seed, .. } | DecoderSampler::Ddim { seed, .. },
                ..
            } => *seed,
            DecoderGraphs::Onepass(_) => 0,
        };
        match self.seed_override {
            Some(s) => (s, s),
            None => (prior, decoder),
        }
    }

    /// Sample the prior from `tokens` (the backbone's) and decode an image.
    pub fn run(&mut self, tokens: &[f32]) -> Result<Reconstruction, ModelError> {
        self.run_with(tokens, None)
    }

    /// As [`Reconstructor::run`], with the noise given (tests).
    pub fn run_with(
        &mut self,
        tokens: &[f32],
        noise: Option<(&mut dyn NoiseSource, &mut dyn NoiseSource)>,
    ) -> Result<Reconstruction, ModelError> {
        let t0 = Instant::now();
        let (prior_seed, decoder_seed) = self.seeds();
        let (mut own_p, mut own_d) = (SeededNoise::new(prior_seed), SeededNoise::new(decoder_seed));
        let (np, nd): (&mut dyn NoiseSource, &mut dyn NoiseSource) = match noise {
            Some((a, b)) => (a, b),
            None => (&mut own_p, &mut own_d),
        };
        let mut prior_calls: Vec<f64> = Vec::new();
        let mut prior_steps = Vec::new();
        let prior_tokens = match &mut self.prior {
            Some((graph, spec, schedule)) => {
                let run = DiscreteRun {
                    kind: spec.sampler.kind,
                    steps: spec.sampler.steps,
                    eta: spec.sampler.eta,
                    guidance: spec.sampler.guidance,
                    prediction: spec.prediction,
                };
                let tdtype = spec.timestep.dtype;
                let (mut ti, mut tf) = ([0i64; 1], [0f32; 1]);
                let mut denoise = |x: &[f32], level: Level, cond: &[f32], out: &mut Vec<f32>| {
                    let level_in = match level_input(tdtype, level, &mut ti, &mut tf) {
                        Dtype::Int64 => Input::I64(&ti),
                        Dtype::Float32 => Input::F32(&tf),
                    };
                    let s = graph.run(&[Input::F32(x), level_in, Input::F32(cond)], &mut [out])?;
                    prior_calls.push(s);
                    Ok::<(), ModelError>(())
                };
                let d: &mut Denoise<'_, ModelError> = &mut denoise;
                let x = sample_discrete(&run, schedule, self.token_len, tokens, np, d)?;
                let per = if run.guidance == 1.0 { 1 } else { 2 };
                prior_steps = prior_calls.chunks(per).map(|c| c.iter().sum()).collect();
                x
            }
            None => tokens.to_vec(),
        };
        let mut decoder_calls: Vec<f64> = Vec::new();
        let mut image = Vec::new();
        let mut latent_decoder_seconds = 0.0;
        let decoder_steps = match &mut self.decoder {
            DecoderGraphs::Onepass(g) => {
                let s = g.run(&[Input::F32(&prior_tokens)], &mut [&mut image])?;
                vec![s]
            }
            DecoderGraphs::Diffusion {
                denoiser,
                latent_decoder,
                latent_len,
                prediction,
                sampler,
                noise_dtype,
            } => {
                let nd_type = *noise_dtype;
                let (mut ti, mut tf) = ([0i64; 1], [0f32; 1]);
                let mut denoise = |x: &[f32], level: Level, cond: &[f32], out: &mut Vec<f32>| {
                    let level_in = match level_input(nd_type, level, &mut ti, &mut tf) {
                        Dtype::Int64 => Input::I64(&ti),
                        Dtype::Float32 => Input::F32(&tf),
                    };
                    let s =
                        denoiser.run(&[Input::F32(x), level_in, Input::F32(cond)], &mut [out])?;
                    decoder_calls.push(s);
                    Ok::<(), ModelError>(())
                };
                let d: &mut Denoise<'_, ModelError> = &mut denoise;
                let (z, guidance) = match *sampler {
                    DecoderSampler::Euler {
                        steps,
                        sigma_min,
                        sigma_max,
                        rho,
                        guidance,
                        ..
                    } => {
                        let run = EulerRun {
                            steps,
                            sigma_min,
                            sigma_max,
                            rho,
                            guidance,
                            prediction: *prediction,
                        };
                        (
                            sample_euler(&run, *latent_len, &prior_tokens, nd, d)?,
                            guidance,
                        )
                    }
                    DecoderSampler::Ddim {
                        steps,
                        eta,
                        guidance,
                        schedule,
                        ..
                    } => {
                        let run = DiscreteRun {
                            kind: DiscreteKind::Ddim,
                            steps,
                            eta,
                            guidance,
                            prediction: *prediction,
                        };
                        let sched = DiscreteSchedule::new(&schedule);
                        (
                            sample_discrete(&run, &sched, *latent_len, &prior_tokens, nd, d)?,
                            guidance,
                        )
                    }
                };
                latent_decoder_seconds =
                    latent_decoder.run(&[Input::F32(&z)], &mut [&mut image])?;
                let per = if guidance == 1.0 { 1 } else { 2 };
                decoder_calls.chunks(per).map(|c| c.iter().sum()).collect()
            }
        };
        Ok(Reconstruction {
            image,
            chw: self.chw,
            prior_tokens,
            prior_seed,
            decoder_seed,
            prior_steps,
            decoder_steps,
            latent_decoder_seconds,
            wall_seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// Run every graph of `graphs` once on zeros (the first call pays for
/// allocation and kernel selection), then `repeats` more times; returns
/// (role, first-call seconds, median seconds of the rest).
pub fn warm_up(
    graphs: &mut [&mut Graph],
    repeats: usize,
) -> Result<Vec<(&'static str, f64, f64)>, ModelError> {
    let mut out = Vec::new();
    for g in graphs.iter_mut() {
        let specs: Vec<TensorSpec> = g.inputs().to_vec();
        let f32s: Vec<Vec<f32>> = specs.iter().map(|s| vec![0.0; s.len()]).collect();
        let i64s: Vec<Vec<i64>> = specs.iter().map(|s| vec![0; s.len()]).collect();
        let inputs: Vec<Input<'_>> = specs
            .iter()
            .enumerate()
            .map(|(k, s)| match s.dtype {
                Dtype::Float32 => Input::F32(&f32s[k]),
                Dtype::Int64 => Input::I64(&i64s[k]),
            })
            .collect();
        let mut bufs: Vec<Vec<f32>> = vec![Vec::new(); g.outputs().len()];
        let mut run = |g: &mut Graph| -> Result<f64, ModelError> {
            let t0 = Instant::now();
            let mut refs: Vec<&mut Vec<f32>> = bufs.iter_mut().collect();
            g.run(&inputs, &mut refs)?;
            Ok(t0.elapsed().as_secs_f64())
        };
        let first = run(g)?;
        let mut times = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            times.push(run(g)?);
        }
        times.sort_by(f64::total_cmp);
        let median = if times.is_empty() {
            first
        } else {
            times[times.len() / 2]
        };
        out.push((g.role(), first, median));
    }
    Ok(out)
}
