"""Which CPUs run bf16 ([train] mixed_precision), read from /proc/cpuinfo, and the one-line refusal."""
import pytest

from efficient_vdvae_core.config import load_config
from efficient_vdvae_core.errors import UserError
from efficient_vdvae_core.precision import check_precision, cpu_bf16_flags
from tests.conftest import EGS


@pytest.mark.parametrize("flags, found", [("fpu avx512f avx512_bf16 avx512_vnni", ("avx512_bf16",)),
                                          ("fpu avx512f amx_bf16 amx_tile avx512_bf16", ("avx512_bf16", "amx_bf16")),
                                          ("fpu sse2 avx2 avx512f avx512bw", ())])
def test_bf16_flags_of_cpuinfo(tmp_path, flags, found):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: x bf16 in a name\nflags\t\t: {flags}\n\n")
    assert cpu_bf16_flags(cpuinfo) == found


def test_arm_features_and_unreadable_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert cpu_bf16_flags(cpuinfo) == ("bf16",)
    assert cpu_bf16_flags(tmp_path / "missing") == ()


def test_bf16_without_hardware_support_is_refused_in_one_line():
    config, _ = load_config(EGS / "tiny.cfg", ["train.mixed_precision='bf16'"])
    with pytest.raises(UserError) as info:
        check_precision(config, False, "this machine's CPU")
    assert str(info.value).startswith("[train] mixed_precision = 'bf16': this machine's CPU has no bf16 support")
    assert "\n" not in str(info.value) and "mixed_precision = 'none'" in str(info.value)
    check_precision(config, True, "this machine's CPU")
    check_precision(load_config(EGS / "tiny.cfg")[0], False, "this machine's CPU")
