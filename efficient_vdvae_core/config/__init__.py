"""The .cfg schema and parser: .cfg text -> frozen, typed, validated `Config`.

Modules: `schema` (sections, keys, kinds, bounds), `cfgfile` (INI text -> raw strings, `--set`
overrides, rewriting the text), `values` (one raw string -> a checked value), `rules` (run names and
checks across keys), `build` (RawConfig -> Config, and Config <-> text / plain dict).

    config, raw = load_config("hparams.cfg", ["train.batch_size=8"])
"""
from efficient_vdvae_core.config.build import (build_config, config_from_dict, config_to_text, differing_keys,
                                               load_config)
from efficient_vdvae_core.config.cfgfile import (RawConfig, parse_override, parse_raw_text, read_raw, render_text,
                                                 with_overrides)
from efficient_vdvae_core.config.rules import RUN_NAME_RULE, run_name_problem, validate
from efficient_vdvae_core.config.schema import (SECTIONS, Config, DataConfig, InitConfig, LossConfig, MetricsConfig,
                                                ModelConfig, OptimizerConfig, RunConfig, SynthesisConfig, TrainConfig,
                                                ValConfig, section_fields)
from efficient_vdvae_core.config.values import coerce, evaluate_raw
from efficient_vdvae_core.dataset_kinds import BINARIZED_SOURCES, DATASET_SOURCES, is_binarized
from efficient_vdvae_core.errors import ConfigError

__all__ = [
    "BINARIZED_SOURCES", "DATASET_SOURCES", "RUN_NAME_RULE", "SECTIONS", "Config", "ConfigError", "DataConfig",
    "InitConfig", "LossConfig", "MetricsConfig", "ModelConfig", "OptimizerConfig", "RawConfig", "RunConfig",
    "SynthesisConfig", "TrainConfig", "ValConfig", "build_config", "coerce", "config_from_dict", "config_to_text",
    "differing_keys", "evaluate_raw", "is_binarized", "load_config", "parse_override", "parse_raw_text",
    "read_raw", "render_text", "run_name_problem", "section_fields", "validate", "with_overrides",
]
