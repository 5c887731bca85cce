"""CE / mCE arithmetic and VTAB means against values worked out by hand."""
import pytest

from scaleshift.data import ALEXNET_ERRORS, corruption_errors, mce, vtab_means
from scaleshift.data.imagenet_c import CORRUPTIONS
from scaleshift.errors import ScaleshiftError


def _errors(per_corruption):
    """{(c, s): e} from {c: [e1..e5]}."""
    return {(c, s + 1): e for c, values in per_corruption.items() for s, e in enumerate(values)}


def test_alexnet_constants_and_identity():
    assert len(CORRUPTIONS) == 15 and ALEXNET_ERRORS["gaussian_noise"] == 0.886428
    assert ALEXNET_ERRORS["jpeg_compression"] == 0.606500
    # AlexNet's own errors give CE = 100 for every corruption, mCE = 100
    same = _errors({c: [m] * 5 for c, m in ALEXNET_ERRORS.items()})
    assert mce(same) == pytest.approx(100.0)


def test_mce_hand_computed_imagenet_c():
    # gaussian_noise errors 0.1 .. 0.5: sum 1.5; AlexNet sum 5 x 0.886428 = 4.43214
    # CE = 1.5 / 4.43214 = 0.338437... -> 33.8437 %; every other corruption at AlexNet level
    # (CE 100), so mCE = (33.8437 + 14 x 100) / 15 = 95.5896 %
    errors = _errors({c: [m] * 5 for c, m in ALEXNET_ERRORS.items()})
    errors.update(_errors({"gaussian_noise": [0.1, 0.2, 0.3, 0.4, 0.5]}))
    per = corruption_errors(errors)
    assert per["gaussian_noise"]["ce"] == pytest.approx(33.8437, abs=1e-4)
    assert per["gaussian_noise"]["mean_error"] == pytest.approx(0.3)
    assert mce(errors) == pytest.approx(95.5896, abs=1e-4)


def test_mce_hand_computed_custom_baseline():
    # a: errors 0.1..0.5 (sum 1.5) vs mean 0.5 (sum 2.5) -> 60 %; b: 0.4 x 5 = 2.0 vs
    # per-severity reference 0.8 x 5 = 4.0 -> 50 %;  mCE = 55 %
    errors = _errors({"a": [0.1, 0.2, 0.3, 0.4, 0.5], "b": [0.4] * 5})
    assert mce(errors, baseline={"a": 0.5, "b": 0.8}) == pytest.approx(55.0)
    per_severity = {("a", s): 0.5 for s in range(1, 6)} | {("b", s): 0.8 for s in range(1, 6)}
    assert mce(errors, baseline=per_severity) == pytest.approx(55.0)


def test_mce_rejects_bad_input():
    full = _errors({c: [m] * 5 for c, m in ALEXNET_ERRORS.items()})
    del full[("fog", 4)]
    with pytest.raises(ScaleshiftError, match="fog: no error for severity 4"):
        mce(full)
    with pytest.raises(ScaleshiftError, match="unknown corruption 'speckle'"):
        mce({("speckle", 1): 0.5})
    with pytest.raises(ScaleshiftError, match="fractions"):
        mce({("fog", 1): 41.5})


def test_vtab_means_hand_computed():
    from scaleshift.data.vtab import VTAB_TASKS
    level = dict(natural=70.0, specialized=80.0, structured=50.0)
    acc = {f"vtab_{t}": level[g] for t, (g, _) in VTAB_TASKS.items()}
    out = vtab_means(acc)
    # 7 natural, 4 specialized, 8 structured: (490 + 320 + 400) / 19 = 63.6842
    assert out["mean"] == pytest.approx(1210 / 19) and out["tasks"] == 19
    assert (out["natural"], out["specialized"], out["structured"]) == (70.0, 80.0, 50.0)
    assert out["group_mean"] == pytest.approx(200 / 3)
    with pytest.raises(ScaleshiftError, match="1 of 19 VTAB tasks missing"):
        vtab_means({k: v for k, v in acc.items() if k != "vtab_dtd"})
    assert vtab_means({"dtd": 60.0}, allow_partial=True)["natural"] == 60.0
