"""The .cfg schema: one frozen dataclass per section, each key with its value kind, bounds and default.

Every key of the original Efficient-VDVAE configs is required; keys this codebase added are optional
(they have a default). Integer keys are bounded to 64 bits unless they say less (`values.coerce`).
"""
import dataclasses
from dataclasses import dataclass

from efficient_vdvae_core.config.rules import validate
from efficient_vdvae_core.dataset_kinds import DATASET_SOURCES

REQUIRED = object()

OPTIMIZERS = {"adamax": "Adamax", "adam": "Adam", "radam": "RAdam"}
LR_SCHEMES = ("constant", "cosine", "exponential", "noam")
VARIATION_SCHEDULES = ("None", "Logistic", "Linear")
SYNTHESIS_MODES = ("reconstruction", "generation", "div_stats", "encoding", "decoding", "iw_nll", "interpolation",
                   "conditional", "sample_quality")
DISTRIBUTION_BASES = ("std", "logstd")
SEED_MAX = 2 ** 31 - 1  # torch.manual_seed, numpy SeedSequence and jax.random.key all take 0..2**31 - 1
MAX_WRITE_RETRIES = 16  # the last wait is 2**16 s (18 h); more would only postpone the error


def field(kind, default=REQUIRED, choices=None, low=None, high=None, low_open=False, high_open=False, doc=""):
    """A config key: its value kind, optional default (keys new in this codebase), and bounds."""
    meta = dict(kind=kind, choices=choices, low=low, high=high, low_open=low_open, high_open=high_open, doc=doc)
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    name: str = field("name", doc="letters, digits, '.', '_' and '-', at most 100 characters, not starting with '.'")
    seed: int = field("int", low=0, high=SEED_MAX, doc="seed of every random draw, 0 to 2**31 - 1")
    num_gpus: int = field("int", low=0)
    num_cpus: int = field("int", low=0)
    max_allowed_checkpoints: int = field("int", low=1)
    device: str = field("choice", "auto", choices=("auto", "cpu", "cuda"),
                        doc="where to run: auto picks CUDA when available")
    checkpoint_write_failure: str = field("choice", "stop", choices=("stop", "retry"),
                                          doc="when a checkpoint cannot be written (disk full, I/O error): stop "
                                              "with a one-line error, or retry checkpoint_write_retries times first")
    checkpoint_write_retries: int = field("int", 3, low=0, high=MAX_WRITE_RETRIES,
                                          doc="retries of a failed checkpoint write with 'retry', after 2, 4, 8... s "
                                              f"(at most {MAX_WRITE_RETRIES})")


@dataclass(frozen=True)
class DataConfig:
    dataset_source: str = field("choice", choices=DATASET_SOURCES)
    train_data_path: str = field("str")
    val_data_path: str = field("str")
    synthesis_data_path: str = field("str")
    target_res: int = field("int", low=1)
    channels: int = field("int", choices=(1, 3))
    num_bits: float = field("float", low=1, high=8)
    random_horizontal_flip: bool = field("bool")
    download_dir: str = field("str", "~/.cache/efficient_vdvae",
                              doc="MNIST/CIFAR-10 downloads and decoded caches (~ expanded, relative to the cwd)")
    decoded_cache: bool = field("bool", False,
                                doc="decode imagenet/folder datasets once into a uint8 .npy memory map under "
                                    "download_dir/decoded (pays off for small images, e.g. celebA 64, imagenet)")
    bad_files: str = field("choice", "refuse", choices=("refuse", "skip"),
                           doc="folder datasets: files that fail the check when opened (empty, broken link, not "
                               "an image, too large, truncated): refuse with a list, or skip them (listed once)")


@dataclass(frozen=True)
class ModelConfig:
    stable_init: bool = field("bool")
    initialize_prior_weights_as_zero: bool = field("bool")
    use_1x1_conv: bool = field("bool")
    distribution_base: str = field("choice", choices=DISTRIBUTION_BASES)
    output_distribution_base: str = field("choice", choices=DISTRIBUTION_BASES)
    gradient_smoothing_beta: float = field("float", low=0, low_open=True)
    output_gradient_smoothing_beta: float = field("float", low=0, low_open=True)
    input_conv_filters: int = field("int", low=1)
    input_kernel_size: tuple = field("kernel")
    up_strides: tuple = field("int_list", low=1)
    up_n_blocks_per_res: tuple = field("int_list", low=0)
    up_n_blocks: tuple = field("int_list", low=0)
    up_n_layers: tuple = field("int_list", low=0)
    up_filters: tuple = field("int_list", low=1)
    up_mid_filters_ratio: tuple = field("float_list", low=0, low_open=True)
    up_kernel_size: tuple = field("int_list", low=1)
    up_skip_filters: tuple = field("int_list", low=1)
    use_residual_distribution: bool = field("bool")
    down_strides: tuple = field("int_list", low=1)
    down_n_blocks_per_res: tuple = field("int_list", low=0)
    down_n_blocks: tuple = field("int_list", low=0)
    down_n_layers: tuple = field("int_list", low=0)
    down_filters: tuple = field("int_list", low=1)
    down_mid_filters_ratio: tuple = field("float_list", low=0, low_open=True)
    down_kernel_size: tuple = field("int_list", low=1)
    down_latent_variates: tuple = field("int_list", low=1)
    output_kernel_size: tuple = field("kernel")
    num_output_mixtures: int = field("int", low=1)


@dataclass(frozen=True)
class LossConfig:
    min_mol_logscale: float = field("float")
    variation_schedule: str = field("choice", choices=VARIATION_SCHEDULES)
    vae_beta_anneal_start: int = field("int", low=0)
    vae_beta_anneal_steps: int = field("int", low=0)
    vae_beta_min: float = field("float", low=0, high=1)
    vae_beta_activation_steps: int = field("int", low=0)
    vae_beta_growth_rate: float = field("float")
    use_gamma_schedule: bool = field("bool")
    gamma_max_steps: int = field("int", low=0)
    scaled_gamma: bool = field("bool")
    use_weight_decay: bool = field("bool")
    l2_weight: float = field("float", low=0)


@dataclass(frozen=True)
class MetricsConfig:
    latent_active_threshold: float = field("float", low=0)


@dataclass(frozen=True)
class OptimizerConfig:
    type: str = field("choice", choices=tuple(OPTIMIZERS.values()))
    learning_rate_scheme: str = field("choice", choices=LR_SCHEMES)
    learning_rate: float = field("float", low=0)
    warmup_steps: float = field("float", low=0)
    decay_steps: int = field("int", low=1)
    decay_start: int = field("int", low=0)
    min_learning_rate: float = field("float", low=0)
    decay_rate: float = field("float", low=0, low_open=True)
    beta1: float = field("float", low=0, high=1, high_open=True)
    beta2: float = field("float", low=0, high=1, high_open=True)
    epsilon: float = field("float", low=0)
    clip_gradient_norm: bool = field("bool")
    gradient_clip_norm_value: float = field("float", low=0, low_open=True)
    gradient_skip: bool = field("bool")
    gradient_skip_threshold: float = field("float", low=0, low_open=True)


@dataclass(frozen=True)
class InitConfig:
    batch_size: int = field("int", low=1, doc="not read by this codebase (the models create their parameters "
                                              "without a dummy batch); accepted so that the original's configs load")


@dataclass(frozen=True)
class TrainConfig:
    total_train_steps: int = field("int", low=1)
    batch_size: int = field("int", low=1)
    ema_decay: float = field("float", low=0, high=1)
    resume_from_ema: bool = field("bool")
    logging_interval_in_steps: int = field("int", low=1)
    checkpoint_and_eval_interval_in_steps: int = field("int", low=1)
    mixed_precision: str = field("choice", "none", choices=("none", "bf16"),
                                 doc="'bf16': convolutions and products in bf16 where the CPU/GPU has it (float32 weights, losses)")
    compile: bool = field("bool", False, doc="torch.compile the model for training")
    activation_checkpointing: bool = field("bool", False, doc="recompute block activations in backward")
    channels_last: bool = field("bool", False, doc="channels-last memory format for convolutions")
    max_consecutive_skips: int = field("int", 100, low=0,
                                       doc="stop when this many updates in a row were skipped (0: never)")


@dataclass(frozen=True)
class ValConfig:
    n_samples_for_validation: int = field("int", low=1)
    batch_size: int = field("int", low=1)


@dataclass(frozen=True)
class SynthesisConfig:
    synthesis_mode: str = field("choice", choices=SYNTHESIS_MODES)
    load_ema_weights: bool = field("bool")
    variate_masks_quantile: float = field("float", low=0, high=1, low_open=True)
    save_target_in_reconstruction: bool = field("bool")
    mask_reconstruction: bool = field("bool")
    div_stats_subset_ratio: float = field("float", low=0, high=1, low_open=True)
    n_generation_batches: int = field("int", low=1)
    temperature_settings: tuple = field("temperatures")
    output_temperature: float = field("float", low=0, low_open=True)
    batch_size: int = field("int", low=1)
    iw_samples: int = field("int", 100, low=1, high=10 ** 6,
                            doc="iw_nll: posterior samples K per image of the importance-weighted bound")
    iw_batch: int = field("int", 10, low=1, high=10 ** 6,
                          doc="iw_nll: samples per model pass (a pass holds batch_size x iw_batch images)")
    interpolation_pairs: int = field("int", 4, low=1, high=10 ** 6,
                                     doc="interpolation: pairs of test images (images 2i and 2i + 1)")
    interpolation_points: int = field("int", 8, low=2, high=1000,
                                      doc="interpolation: images per strip, both end points included")
    keep_top_layers: tuple = field("int_list", (0, 1, 2), low=0,
                                   doc="conditional: the numbers k of top latent layers taken from an image's "
                                       "posterior (the rest are sampled from the prior)")
    conditional_samples: int = field("int", 4, low=1, high=1000, doc="conditional: samples per image and k")
    quality_samples: int = field("int", 1000, low=2, high=10 ** 7,
                                 doc="sample_quality: generated images, compared with as many test images")
    inception_path: str = field("str", "~/.cache/efficient_vdvae/inception-2015-12-05.pt",
                                doc="sample_quality: the TorchScript Inception network of StyleGAN2-ADA's metrics "
                                    "(a local file; nothing is downloaded)")


@dataclass(frozen=True)
class Config:
    run: RunConfig
    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    metrics: MetricsConfig
    optimizer: OptimizerConfig
    init: InitConfig
    train: TrainConfig
    val: ValConfig
    synthesis: SynthesisConfig

    def replace(self, **sections):
        """Return a copy with whole sections replaced, re-validated."""
        new = dataclasses.replace(self, **sections)
        validate(new, "<replace>")
        return new

    def to_dict(self):
        """Nested plain dict of every value (lists as lists), e.g. for checkpoints and JSON."""
        return {s.name: {k: _plain(v) for k, v in dataclasses.asdict(getattr(self, s.name)).items()}
                for s in dataclasses.fields(self)}


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
SECTIONS = {name: globals()[cls] if isinstance(cls, str) else cls for name, cls in SECTIONS.items()}


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def section_fields(section):
    """The dataclass fields of one section, by key name."""
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}
