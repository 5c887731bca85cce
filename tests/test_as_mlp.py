"""Tests for the AS-MLP timm backbone (scaleshift.backbones.as_mlp)."""
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import timm

try:
    from scaleshift.backbones import as_mlp
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))
    from scaleshift.backbones import as_mlp


# --------------------------------------------------------------------------------------
# expected official layout (svip-lab/AS-MLP models/as_mlp.py), written out independently
# --------------------------------------------------------------------------------------

def official_keys_and_shapes(embed_dim, depths, num_classes, in_chans=3, patch=4, mlp_ratio=4):
    exp = {
        'patch_embed.proj.weight': (embed_dim, in_chans, patch, patch),
        'patch_embed.proj.bias': (embed_dim,),
        'patch_embed.norm.weight': (embed_dim,),
        'patch_embed.norm.bias': (embed_dim,),
    }
    for i, depth in enumerate(depths):
        c = embed_dim * 2 ** i
        h = int(c * mlp_ratio)
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}.'
            for norm in ('norm1', 'norm2', 'axial_shift.norm1', 'axial_shift.norm2'):
                exp[p + norm + '.weight'] = (c,)
                exp[p + norm + '.bias'] = (c,)
            for conv in ('conv1', 'conv2_1', 'conv2_2', 'conv3'):
                exp[p + f'axial_shift.{conv}.weight'] = (c, c, 1, 1)
                exp[p + f'axial_shift.{conv}.bias'] = (c,)
            exp[p + 'mlp.fc1.weight'] = (h, c, 1, 1)
            exp[p + 'mlp.fc1.bias'] = (h,)
            exp[p + 'mlp.fc2.weight'] = (c, h, 1, 1)
            exp[p + 'mlp.fc2.bias'] = (c,)
        if i < len(depths) - 1:
            exp[f'layers.{i}.downsample.reduction.weight'] = (2 * c, 4 * c, 1, 1)
            exp[f'layers.{i}.downsample.norm.weight'] = (4 * c,)
            exp[f'layers.{i}.downsample.norm.bias'] = (4 * c,)
    nf = embed_dim * 2 ** (len(depths) - 1)
    exp['norm.weight'] = (nf,)
    exp['norm.bias'] = (nf,)
    if num_classes > 0:
        exp['head.weight'] = (num_classes, nf)
        exp['head.bias'] = (num_classes,)
    return exp


@pytest.fixture(scope='module')
def base_meta():
    with torch.device('meta'):
        return timm.create_model('as_mlp_base', num_classes=100)


# --------------------------------------------------------------------------------------
# axial shift numerics
# --------------------------------------------------------------------------------------

def shift_pad_chunk_roll(x, shift_size, dim):
    """Reference: zero pad H and W, chunk channels, roll chunk k by k - pad, crop back."""
    _, _, H, W = x.shape
    pad = shift_size // 2
    xp = F.pad(x, (pad, pad, pad, pad))
    chunks = torch.chunk(xp, shift_size, dim=1)
    rolled = [torch.roll(c, s, dim) for c, s in zip(chunks, range(-pad, pad + 1))]
    out = torch.cat(rolled, dim=1)
    return out[:, :, pad:pad + H, pad:pad + W]


def shift_kernel_formula(x, shift_size, dim):
    """Reference: the CUDA kernel's per-element rule out[c, p] = x[c, p + s], s = pad - c // group."""
    B, C, H, W = x.shape
    group = math.ceil(C / shift_size)
    pad = shift_size // 2
    out = torch.zeros_like(x)
    for c in range(C):
        s = pad - c // group
        n = H if dim == 2 else W
        for p in range(n):
            q = p + s
            if 0 <= q < n:
                if dim == 2:
                    out[:, c, p, :] = x[:, c, q, :]
                else:
                    out[:, c, :, p] = x[:, c, :, q]
    return out


@pytest.mark.parametrize('channels', [5, 7, 16, 20, 23])
@pytest.mark.parametrize('shift_size', [3, 5])
@pytest.mark.parametrize('dim', [2, 3])
def test_axial_shift_matches_official_semantics(channels, shift_size, dim):
    torch.manual_seed(0)
    x = torch.randn(2, channels, 6, 9)
    out = as_mlp.axial_shift(x, shift_size, dim)
    assert torch.equal(out, shift_pad_chunk_roll(x, shift_size, dim))
    assert torch.equal(out, shift_kernel_formula(x, shift_size, dim))


# --------------------------------------------------------------------------------------
# model interface
# --------------------------------------------------------------------------------------

def test_registered():
    for name in ('as_mlp_tiny', 'as_mlp_small', 'as_mlp_base', 'as_mlp_test'):
        assert timm.is_model(name)
    cfg = timm.models.get_pretrained_cfg('as_mlp_base')
    assert cfg.num_classes == 1000 and cfg.input_size == (3, 224, 224)
    assert cfg.crop_pct == 0.9 and cfg.interpolation == 'bicubic'
    assert cfg.first_conv == 'patch_embed.proj' and cfg.classifier == 'head'
    assert not cfg.url and not cfg.hf_hub_id


def test_forward_shapes():
    torch.manual_seed(0)
    model = timm.create_model('as_mlp_test', num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 2, 2) and model.num_features == 128
    assert model.forward_head(feats, pre_logits=True).shape == (2, 128)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.allclose(out, model.forward_head(feats))
    assert model.get_classifier() is model.head
    assert model.pretrained_cfg['architecture'] == 'as_mlp_test'
    assert model.default_cfg is model.pretrained_cfg

    # other input sizes (divisible by 32) work
    assert model(torch.randn(1, 3, 96, 128)).shape == (1, 10)

    model.reset_classifier(0)
    assert isinstance(model.head, torch.nn.Identity) and model.num_classes == 0
    assert model(x).shape == (2, 128)
    model.reset_classifier(5, global_pool='')
    assert model.forward_features(x).shape == (2, 128, 2, 2)
    model.reset_classifier(7, global_pool='avg')
    assert model(x).shape == (2, 7)

    headless = timm.create_model('as_mlp_test', num_classes=0)
    assert isinstance(headless.head, torch.nn.Identity)
    assert headless(x).shape == (2, 128)
    assert headless.no_weight_decay() == set()


def test_drop_path_rate_and_grad_checkpointing():
    model = timm.create_model('as_mlp_test', drop_path_rate=0.3)
    probs = [blk.drop_path.drop_prob for stage in model.layers for blk in stage.blocks
             if not isinstance(blk.drop_path, torch.nn.Identity)]
    assert probs and max(probs) == pytest.approx(0.3)
    with torch.device('meta'):
        base = timm.create_model('as_mlp_base')
    assert base.layers[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.5)
    assert isinstance(base.layers[0].blocks[0].drop_path, torch.nn.Identity)

    model.train()
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    assert model.patch_embed.proj.weight.grad is not None


def test_group_matcher_covers_all_params():
    from timm.models import group_parameters
    model = timm.create_model('as_mlp_test')
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        names = [n for g in groups.values() for n in g]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters())


def test_features_only():
    model = timm.create_model('as_mlp_test', features_only=True).eval()
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128] == model.feature_info.channels()
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    assert model.feature_info.reduction() == [4, 8, 16, 32]


def test_matches_functional_reference():
    """Re-run the official forward order functionally from the state dict."""
    torch.manual_seed(0)
    model = timm.create_model('as_mlp_test', num_classes=10).eval()
    # non-trivial norm affine params so ordering mistakes are visible
    with torch.no_grad():
        for n, p in model.named_parameters():
            if 'norm' in n:
                p.add_(0.1 * torch.randn_like(p))
    sd = model.state_dict()
    gelu = F.gelu

    def gn(x, k):
        return F.group_norm(x, 1, sd[k + '.weight'], sd[k + '.bias'], eps=1e-5)

    def conv(x, k, bias=True):
        return F.conv2d(x, sd[k + '.weight'], sd.get(k + '.bias') if bias else None)

    x = torch.randn(2, 3, 64, 64)
    y = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=4)
    y = gn(y, 'patch_embed.norm')
    for i, stage in enumerate(model.layers):
        for j in range(len(stage.blocks)):
            p = f'layers.{i}.blocks.{j}.'
            t = gelu(gn(conv(gn(y, p + 'norm1'), p + 'axial_shift.conv1'), p + 'axial_shift.norm1'))
            lr = gelu(conv(shift_pad_chunk_roll(t, 5, 3), p + 'axial_shift.conv2_1'))
            td = gelu(conv(shift_pad_chunk_roll(t, 5, 2), p + 'axial_shift.conv2_2'))
            y = y + conv(gn(lr + td, p + 'axial_shift.norm2'), p + 'axial_shift.conv3')
            y = y + conv(gelu(conv(gn(y, p + 'norm2'), p + 'mlp.fc1')), p + 'mlp.fc2')
        if stage.downsample is not None:
            y = torch.cat([y[:, :, 0::2, 0::2], y[:, :, 1::2, 0::2], y[:, :, 0::2, 1::2], y[:, :, 1::2, 1::2]], 1)
            y = conv(gn(y, f'layers.{i}.downsample.norm'), f'layers.{i}.downsample.reduction', bias=False)
    y = gn(y, 'norm').mean((2, 3))
    ref = F.linear(y, sd['head.weight'], sd['head.bias'])
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------
# official checkpoint layout / parameter counts (as_mlp_base on the meta device)
# --------------------------------------------------------------------------------------

def test_base_state_dict_matches_official_layout(base_meta):
    exp = official_keys_and_shapes(128, (2, 2, 18, 2), num_classes=100)
    sd = base_meta.state_dict()
    assert set(sd) == set(exp)
    assert {k: tuple(v.shape) for k, v in sd.items()} == exp
    assert not any('ssf' in k for k in sd)
    assert len(list(base_meta.buffers())) == 0


def test_base_param_count(base_meta):
    n = sum(p.numel() for p in base_meta.parameters())
    exp = official_keys_and_shapes(128, (2, 2, 18, 2), num_classes=100)
    assert n == sum(math.prod(s) for s in exp.values())
    assert n == 86_830_308
    with torch.device('meta'):
        assert sum(p.numel() for p in timm.create_model('as_mlp_base').parameters()) == 87_752_808
        assert sum(p.numel() for p in timm.create_model('as_mlp_small').parameters()) == 49_594_696
        assert sum(p.numel() for p in timm.create_model('as_mlp_tiny').parameters()) == 28_282_696


def test_ssf_paper_insertion_count(base_meta):
    """SSF paper (AS-MLP-B, 100 classes): 369,252 tunable params.

    Insertion points: per block norm1, conv1, conv2_1, conv2_2, conv3, norm2 and fc2 (C each),
    fc1 (4C); final norm (C); each point has scale + shift; plus the new head.
    """
    dims = []
    for name, module in base_meta.named_modules():
        if name.startswith('layers.') and '.blocks.' in name:
            leaf = name.split('.blocks.')[1].split('.', 1)
            if len(leaf) == 2 and leaf[1] in ('norm1', 'norm2', 'axial_shift.conv1', 'axial_shift.conv2_1',
                                             'axial_shift.conv2_2', 'axial_shift.conv3', 'mlp.fc1', 'mlp.fc2'):
                dims.append(module.weight.shape[0])
    dims.append(base_meta.norm.weight.shape[0])
    head = base_meta.head.weight.numel() + base_meta.head.bias.numel()
    assert 2 * sum(dims) + head == 369_252


# --------------------------------------------------------------------------------------
# loading through timm's own pretrained path
# --------------------------------------------------------------------------------------

def _assert_same_weights(model, ref_sd, skip=()):
    sd = model.state_dict()
    assert set(sd) == set(ref_sd)
    for k, v in ref_sd.items():
        if k in skip:
            continue
        assert torch.equal(sd[k], v), k


def test_load_official_style_pth(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    torch.manual_seed(1)
    src = timm.create_model('as_mlp_test', num_classes=1000)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / 'asmlp_test.pth'
    torch.save({'model': sd, 'epoch': 299, 'max_accuracy': 0.0}, path)

    loaded = timm.create_model('as_mlp_test', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_same_weights(loaded, sd)

    # the filter unwraps {'model': ...} on its own as well, and strict-loads
    fresh = timm.create_model('as_mlp_test')
    fresh.load_state_dict(as_mlp.checkpoint_filter_fn(torch.load(path, weights_only=True), fresh), strict=True)
    _assert_same_weights(fresh, sd)

    # DDP-prefixed checkpoint
    ddp_path = tmp_path / 'ddp.pth'
    torch.save({'model': {'module.' + k: v for k, v in sd.items()}}, ddp_path)
    loaded = timm.create_model('as_mlp_test', pretrained=True, pretrained_cfg_overlay=dict(file=str(ddp_path)))
    _assert_same_weights(loaded, sd)

    # new classifier: head is re-initialised, everything else loaded
    loaded = timm.create_model(
        'as_mlp_test', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=100)
    assert loaded.head.weight.shape == (100, 128)
    body = {k: v for k, v in sd.items() if not k.startswith('head.')}
    for k, v in body.items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_load_safetensors(tmp_path):
    safetensors_torch = pytest.importorskip('safetensors.torch')
    torch.manual_seed(2)
    src = timm.create_model('as_mlp_test')
    sd = {k: v.clone().contiguous() for k, v in src.state_dict().items()}
    path = tmp_path / 'asmlp_test.safetensors'
    safetensors_torch.save_file(sd, str(path))
    loaded = timm.create_model('as_mlp_test', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    _assert_same_weights(loaded, sd)


def test_pretrained_without_file_errors():
    with pytest.raises(RuntimeError):
        timm.create_model('as_mlp_test', pretrained=True)


class _FakeYacsConfig:
    """Stands in for the yacs CfgNode the official training code pickles into checkpoints."""

    def __init__(self):
        self.MODEL = {'TYPE': 'asmlp'}


def test_convert_raw_training_checkpoint(tmp_path):
    torch.manual_seed(3)
    src = timm.create_model('as_mlp_test')
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    raw = tmp_path / 'ckpt_epoch_299.pth'
    torch.save({'model': sd, 'optimizer': {}, 'epoch': 299, 'config': _FakeYacsConfig()}, raw)

    # timm loads with weights_only=True and refuses the pickled config object
    with pytest.raises(Exception, match='weights_only|Unsupported global'):
        timm.create_model('as_mlp_test', pretrained=True, pretrained_cfg_overlay=dict(file=str(raw)))

    for name in ('clean.pth', 'clean.safetensors'):
        if name.endswith('.safetensors'):
            pytest.importorskip('safetensors')
        dst = as_mlp.convert_official_checkpoint(str(raw), str(tmp_path / name))
        loaded = timm.create_model('as_mlp_test', pretrained=True, pretrained_cfg_overlay=dict(file=dst))
        _assert_same_weights(loaded, sd)
    from scaleshift.errors import ScaleshiftError
    mine = tmp_path / 'mine.safetensors'   # a file of the user's is never replaced
    mine.write_text('USER DATA')
    with pytest.raises(ScaleshiftError, match='never replaces a file'):
        as_mlp.convert_official_checkpoint(str(raw), str(mine))
    assert mine.read_text() == 'USER DATA'


def test_torchscript_and_fx():
    model = timm.create_model('as_mlp_test').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            scripted = torch.jit.script(model)
        assert torch.allclose(scripted(x), ref, atol=1e-6)
        from timm.models._features_fx import create_feature_extractor
        fx = create_feature_extractor(model, {'norm': 'out'})
        assert torch.allclose(fx(x)['out'], model.forward_features(x), atol=1e-6)


def test_strict_img_size():
    model = timm.create_model('as_mlp_test', strict_img_size=True)
    with pytest.raises(AssertionError):
        model(torch.randn(1, 3, 96, 96))
