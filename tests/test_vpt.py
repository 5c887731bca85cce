"""VPT semantics: prompts enter where VPT puts them, and leave before the head."""
import torch
import torch.nn.functional as F

import scaleshift
from scaleshift.merge import perturb_trainable

from conftest import make_input, make_model


def test_vit_deep_prompts_replace_tokens_before_every_block():
    model = make_model("vit")
    scaleshift.apply(model, "vpt_deep", prompts=3, dropout=0.0)
    perturb_trainable(model)
    model.eval()
    x = make_input("vit")
    wrapped = model.blocks
    with torch.no_grad():
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for i, block in enumerate(wrapped.base_layer):
            prompts = wrapped.prompts[i].expand(tokens.shape[0], -1, -1)
            rest = tokens[:, 1:] if i == 0 else tokens[:, 1 + 3:]
            tokens = block(torch.cat([tokens[:, :1], prompts, rest], dim=1))
        tokens = torch.cat([tokens[:, :1], tokens[:, 4:]], dim=1)
        expected = model.forward_head(model.norm(tokens))
        torch.testing.assert_close(model(x), expected)


def test_vit_shallow_prompts_are_carried_and_change_the_output():
    model = make_model("vit")
    x = make_input("vit")
    model.eval()
    with torch.no_grad():
        base = model(x)
        scaleshift.apply(model, "vpt_shallow", prompts=4, dropout=0.0)
        assert model.blocks.prompts.shape == (1, 4, 32)
        assert not torch.allclose(model.eval()(x), base)


def test_swin_prompts_act_as_extra_keys_and_values_in_each_window():
    model = make_model("swin")
    scaleshift.apply(model, "vpt_deep", prompts=2, dropout=0.0)
    perturb_trainable(model)
    wrapper = model.layers[0].blocks[0].attn
    attn = wrapper.base_layer
    attn.eval(), wrapper.eval()
    windows = torch.randn(3, attn.window_area, 16)
    with torch.no_grad():
        tokens = torch.cat([windows, wrapper.norm(wrapper.prompts).expand(3, -1, -1)], dim=1)
        q, k, v = attn.qkv(tokens).reshape(3, tokens.shape[1], 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        bias = F.pad(attn._get_rel_pos_bias(), (0, 2, 0, 2))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)[:, :, :attn.window_area]
        expected = attn.proj(out.transpose(1, 2).reshape(3, attn.window_area, -1))
        torch.testing.assert_close(wrapper(windows), expected)
