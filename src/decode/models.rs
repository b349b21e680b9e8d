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
    DecoderIo, DecoderSampler, DiscreteKind, Grid, ModelManifest, PriorSpec, StartKind,
    SubjectManifest, UncondKind, UncondSpec,
};
use super::retrieval::{Bank, Candidate};
use super::runtime::{Graph, Input, Runtime};
use super::sampler::{
    Denoise, DiscreteRun, DiscreteSchedule, EulerRun, EulerStart, Level, NoiseSource, SeededNoise,
    StepAlphas, Uncond, dalle2_pairs, even_pairs, list_pairs, one_pass, sample_discrete,
    sample_euler,
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
    /// Every bank candidate's score, in bank order (empty without a bank):
    /// ranking the true image reads these instead of scoring again.
    pub scores: Vec<f32>,
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
    /// The diffusion decoder's final latent, before the latent decoder
    /// (empty for a one-pass decoder).
    pub latent: Vec<f32>,
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
    /// ONNX Runtime seconds of the low-level decoder (0 without it).
    pub lowlevel_seconds: f64,
    /// Wall time of the whole reconstruction, seconds.
    pub wall_seconds: f64,
}

impl Reconstruction {
    /// Seconds ONNX Runtime spent executing graphs.
    pub fn graph_seconds(&self) -> f64 {
        self.prior_steps.iter().sum::<f64>()
            + self.decoder_steps.iter().sum::<f64>()
            + self.latent_decoder_seconds
            + self.lowlevel_seconds
    }
}

/// A diffusion decoder's loop, resolved from the manifest once.
enum DecoderPlan {
    Euler(EulerRun),
    Ddim(DiscreteRun, DiscreteSchedule),
}

// One per session, never moved in a hot loop.
#[allow(clippy::large_enum_variant)]
enum DecoderGraphs {
    Onepass(Graph),
    Diffusion {
        denoiser: Graph,
        latent_decoder: Graph,
        latent_len: usize,
        plan: DecoderPlan,
        seed: u64,
        batch: usize,
        noise_dtype: Dtype,
    },
}

/// The prior's graph and its loop, resolved from the manifest once.
struct PriorPlan {
    graph: Graph,
    spec: PriorSpec,
    run: DiscreteRun,
    schedule: DiscreteSchedule,
}

/// The unconditional input a manifest names, loaded.
fn load_uncond(
    spec: &UncondSpec,
    len: usize,
    field: &str,
    m: &ModelManifest,
) -> Result<Uncond, ModelError> {
    Ok(match spec {
        UncondSpec::Named(UncondKind::Zeros) => Uncond::Zeros,
        UncondSpec::Named(UncondKind::Noise) => Uncond::Noise,
        UncondSpec::File { file } => {
            let bytes = std::fs::read(file).map_err(|source| ModelError::Io {
                path: file.clone(),
                source,
            })?;
            let (values, _, _) =
                crate::formats::npy::decode_2d(&bytes).map_err(|message| ModelError::Manifest {
                    path: m.path.clone(),
                    message: format!("{field} = {}: {message}", file.display()),
                })?;
            if values.len() != len || values.iter().any(|v| !v.is_finite()) {
                return Err(ModelError::Manifest {
                    path: m.path.clone(),
                    message: format!(
                        "{field} = {}: {} values (finite) needed, the file has {}",
                        file.display(),
                        len,
                        values.len()
                    ),
                });
            }
            Uncond::Tensor(values.iter().map(|&v| v as f32).collect())
        }
    })
}

/// The low-level branch: its decoder graph, image size and blend weight.
struct Lowlevel {
    graph: Graph,
    chw: (usize, usize, usize),
    blend: f64,
}

/// Prior sampler + decoder.
pub struct Reconstructor {
    lowlevel: Option<Lowlevel>,
    prior: Option<PriorPlan>,
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

/// The noise-level input, as every element of `i` (timestep) and `f` (σ
/// or timestep as float): one per sample of the graph's batch.
fn level_input(level: Level, i: &mut [i64], f: &mut [f32]) {
    let (iv, fv) = match level {
        Level::Timestep(t) => (t, t as f32),
        Level::Sigma(s) => (s.round() as i64, s as f32),
    };
    i.fill(iv);
    f.fill(fv);
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
        let scores = self
            .bank
            .as_ref()
            .map(|b| b.scores(&query))
            .unwrap_or_default();
        let top = self
            .bank
            .as_ref()
            .map(|b| b.top_k_of(&scores, self.top_k))
            .unwrap_or_default();
        Ok(FastOutput {
            latent,
            tokens,
            query,
            lowlevel: self.has_lowlevel.then_some(lowlevel),
            top,
            scores,
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
                let graph = rt.load_graph(
                    "prior",
                    &p.file,
                    vec![p.sample.clone(), p.timestep.clone(), p.cond.clone()],
                    vec![p.output.clone()],
                )?;
                let schedule = DiscreteSchedule::new(&p.schedule);
                let (pairs, alphas) = match (&p.sampler.timesteps, p.sampler.grid) {
                    (Some(ts), _) => (list_pairs(ts), StepAlphas::Standard),
                    (None, Grid::Even) => {
                        (even_pairs(&schedule, p.sampler.steps), StepAlphas::Standard)
                    }
                    (None, Grid::Dalle2) => (
                        dalle2_pairs(p.schedule.train_steps, p.sampler.steps),
                        StepAlphas::Previous,
                    ),
                };
                let run = DiscreteRun {
                    kind: p.sampler.kind,
                    pairs,
                    alphas,
                    eta: p.sampler.eta,
                    guidance: p.sampler.guidance,
                    uncond: load_uncond(&p.uncond, p.cond.len(), "prior.uncond", m)?,
                    prediction: p.prediction,
                };
                Some(PriorPlan {
                    graph,
                    spec: p.clone(),
                    run,
                    schedule,
                })
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
                uncond,
                batch,
            } => {
                let latent_len = sample.len() / batch;
                let noise_dtype = noise.dtype;
                let uncond = load_uncond(&uncond, cond.len() / batch, "decoder.uncond", m)?;
                let (plan, seed) = match &sampler {
                    DecoderSampler::Euler {
                        guidance,
                        start,
                        offset_noise,
                        seed,
                        ..
                    } => {
                        let grid =
                            sampler
                                .euler_grid()
                                .map_err(|message| ModelError::Manifest {
                                    path: m.path.clone(),
                                    message: format!("decoder.sampler: {message}"),
                                })?;
                        (
                            DecoderPlan::Euler(EulerRun {
                                sigmas: super::sampler::euler_sigmas(&grid),
                                guidance: *guidance,
                                uncond,
                                start: match start {
                                    StartKind::Sigma => EulerStart::Sigma,
                                    StartKind::Unclip => EulerStart::Unclip,
                                },
                                offset_noise: *offset_noise,
                                prediction,
                            }),
                            *seed,
                        )
                    }
                    DecoderSampler::Ddim {
                        steps,
                        eta,
                        guidance,
                        seed,
                        schedule,
                    } => {
                        let sched = DiscreteSchedule::new(schedule);
                        (
                            DecoderPlan::Ddim(
                                DiscreteRun {
                                    kind: DiscreteKind::Ddim,
                                    pairs: even_pairs(&sched, *steps),
                                    alphas: StepAlphas::Standard,
                                    eta: *eta,
                                    guidance: *guidance,
                                    uncond,
                                    prediction,
                                },
                                sched,
                            ),
                            *seed,
                        )
                    }
                };
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
                    plan,
                    seed,
                    batch,
                    noise_dtype,
                }
            }
        };
        let chw = m.image_chw().unwrap_or((3, 1, 1));
        let lowlevel = match (&m.lowlevel, &m.backbone.lowlevel) {
            (Some(l), Some(latent)) => {
                let image = TensorSpec {
                    name: String::new(),
                    shape: l.image.shape.clone(),
                    dtype: Dtype::Float32,
                };
                let input = l.latent_decoder.input.resolve_for(
                    latent,
                    "lowlevel.latent_decoder.input",
                    m,
                )?;
                let output = l.latent_decoder.output.resolve_for(
                    &image,
                    "lowlevel.latent_decoder.output",
                    m,
                )?;
                let s = &l.image.shape;
                Some(Lowlevel {
                    graph: rt.load_graph(
                        "lowlevel",
                        &l.latent_decoder.file,
                        vec![input],
                        vec![output],
                    )?,
                    chw: (s[1] as usize, s[2] as usize, s[3] as usize),
                    blend: l.blend,
                })
            }
            _ => None,
        };
        Ok(Some(Reconstructor {
            lowlevel,
            prior,
            decoder,
            token_len: m.backbone.tokens.len(),
            chw,
            seed_override: seed,
        }))
    }

    /// Every graph it runs.
    pub fn graphs(&self) -> Vec<&Graph> {
        let mut g: Vec<&Graph> = self.prior.iter().map(|p| &p.graph).collect();
        g.extend(self.lowlevel.iter().map(|l| &l.graph));
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
        let mut g: Vec<&mut Graph> = self.prior.iter_mut().map(|p| &mut p.graph).collect();
        g.extend(self.lowlevel.iter_mut().map(|l| &mut l.graph));
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
        let prior = self.prior.as_ref().map_or(0, |p| p.spec.sampler.seed);
        let decoder = match &self.decoder {
            DecoderGraphs::Diffusion { seed, .. } => *seed,
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

    /// As [`Reconstructor::run`], blending in the low-level branch's blurry
    /// image when the model has one and `lowlevel` (the backbone's
    /// low-level latent) is given.
    pub fn run_blended(
        &mut self,
        tokens: &[f32],
        lowlevel: Option<&[f32]>,
    ) -> Result<Reconstruction, ModelError> {
        let mut r = self.run_with(tokens, None)?;
        if let (Some(l), Some(latent)) = (self.lowlevel.as_mut(), lowlevel) {
            let mut blurry = Vec::new();
            let s = l.graph.run(&[Input::F32(latent)], &mut [&mut blurry])?;
            r.lowlevel_seconds = s;
            let (c, h, w) = r.chw;
            let resized = super::image::resize_bilinear(&blurry, l.chw, h, w);
            if l.chw.0 == c {
                let b = l.blend as f32;
                for (v, &u) in r.image.iter_mut().zip(&resized) {
                    *v = (1.0 - b) * *v + b * u;
                }
            }
        }
        Ok(r)
    }

    /// Whether the model has a low-level branch.
    pub fn has_lowlevel(&self) -> bool {
        self.lowlevel.is_some()
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
            Some(PriorPlan {
                graph,
                spec,
                run,
                schedule,
            }) => {
                let tdtype = spec.timestep.dtype;
                let (mut ti, mut tf) = ([0i64; 1], [0f32; 1]);
                let mut denoise = one_pass(
                    |x: &[f32], level: Level, cond: &[f32], out: &mut Vec<f32>| {
                        level_input(level, &mut ti, &mut tf);
                        let level_in = match tdtype {
                            Dtype::Int64 => Input::I64(&ti),
                            Dtype::Float32 => Input::F32(&tf),
                        };
                        let s =
                            graph.run(&[Input::F32(x), level_in, Input::F32(cond)], &mut [out])?;
                        prior_calls.push(s);
                        Ok::<(), ModelError>(())
                    },
                );
                let d: &mut Denoise<'_, ModelError> = &mut denoise;
                let x = sample_discrete(run, schedule, self.token_len, tokens, np, d)?;
                drop(denoise);
                let per = if run.guidance == 1.0 { 1 } else { 2 };
                prior_steps = prior_calls.chunks(per).map(|c| c.iter().sum()).collect();
                x
            }
            None => tokens.to_vec(),
        };
        let mut decoder_calls: Vec<f64> = Vec::new();
        let mut image = Vec::new();
        let mut latent_decoder_seconds = 0.0;
        let mut latent = Vec::new();
        let decoder_steps = match &mut self.decoder {
            DecoderGraphs::Onepass(g) => {
                let s = g.run(&[Input::F32(&prior_tokens)], &mut [&mut image])?;
                vec![s]
            }
            DecoderGraphs::Diffusion {
                denoiser,
                latent_decoder,
                latent_len,
                plan,
                batch,
                noise_dtype,
                ..
            } => {
                let nd_type = *noise_dtype;
                let batched = *batch == 2;
                let (mut ti, mut tf) = ([0i64; 2], [0f32; 2]);
                // A batched graph takes [uncond; cond] (sgm's order); the
                // conditioning pair is the same at every step, so it is
                // concatenated once per reconstruction.
                let (mut xb, mut cb, mut ob) = (Vec::new(), Vec::new(), Vec::new());
                let mut denoise = |x: &[f32],
                                   level: Level,
                                   cond: &[f32],
                                   uncond: Option<&[f32]>,
                                   out: &mut Vec<f32>,
                                   out_u: &mut Vec<f32>| {
                    let n = if batched { 2 } else { 1 };
                    level_input(level, &mut ti[..n], &mut tf[..n]);
                    let level_in = match nd_type {
                        Dtype::Int64 => Input::I64(&ti[..n]),
                        Dtype::Float32 => Input::F32(&tf[..n]),
                    };
                    match (batched, uncond) {
                        (true, Some(u)) => {
                            xb.clear();
                            xb.extend_from_slice(x);
                            xb.extend_from_slice(x);
                            if cb.is_empty() {
                                cb.extend_from_slice(u);
                                cb.extend_from_slice(cond);
                            }
                            let s = denoiser.run(
                                &[Input::F32(&xb), level_in, Input::F32(&cb)],
                                &mut [&mut ob],
                            )?;
                            let half = ob.len() / 2;
                            out_u.clear();
                            out_u.extend_from_slice(&ob[..half]);
                            out.clear();
                            out.extend_from_slice(&ob[half..]);
                            decoder_calls.push(s);
                        }
                        _ => {
                            let s = denoiser
                                .run(&[Input::F32(x), level_in, Input::F32(cond)], &mut [out])?;
                            decoder_calls.push(s);
                            if let Some(u) = uncond {
                                let s = denoiser
                                    .run(&[Input::F32(x), level_in, Input::F32(u)], &mut [out_u])?;
                                decoder_calls.push(s);
                            }
                        }
                    }
                    Ok::<(), ModelError>(())
                };
                let d: &mut Denoise<'_, ModelError> = &mut denoise;
                let (z, guidance) = match plan {
                    DecoderPlan::Euler(run) => (
                        sample_euler(run, *latent_len, &prior_tokens, nd, d)?,
                        run.guidance,
                    ),
                    DecoderPlan::Ddim(run, sched) => (
                        sample_discrete(run, sched, *latent_len, &prior_tokens, nd, d)?,
                        run.guidance,
                    ),
                };
                latent_decoder_seconds =
                    latent_decoder.run(&[Input::F32(&z)], &mut [&mut image])?;
                latent = z;
                let per = if guidance == 1.0 || batched { 1 } else { 2 };
                decoder_calls.chunks(per).map(|c| c.iter().sum()).collect()
            }
        };
        Ok(Reconstruction {
            image,
            chw: self.chw,
            prior_tokens,
            latent,
            prior_seed,
            decoder_seed,
            prior_steps,
            decoder_steps,
            latent_decoder_seconds,
            lowlevel_seconds: 0.0,
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
