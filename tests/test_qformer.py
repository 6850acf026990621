import pytest
import torch
import torch.nn.functional as F

from desta_audio.config import DeSTAConfig, default_tap_layers
from desta_audio.qformer import QFormer, QFormerConnector, _attention_with_dropout


def test_default_taps_match_the_release():
    assert default_tap_layers(32) == [7, 15, 23, 31]  # large-v3
    assert default_tap_layers(24) == [5, 11, 17, 23]  # medium
    assert default_tap_layers(12) == [2, 5, 8, 11]  # small
    assert default_tap_layers(4) == [0, 1, 2, 3]  # tiny
    assert DeSTAConfig(target_layer_ids=[1, 3]).tap_layers(4) == [1, 3]
    with pytest.raises(ValueError, match="do not exist"):
        DeSTAConfig(target_layer_ids=[9]).tap_layers(4)


def test_matches_the_release_bert_encoder():
    """The release builds BertEncoder(BertConfig(is_decoder=True, add_cross_attention=True)) directly, which runs
    eager attention with no mask: bidirectional queries. Same weights must give the same outputs."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertEncoder

    config = BertConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64,
                        add_cross_attention=True, is_decoder=True)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    reference = BertEncoder(config).eval()
    ours = QFormer(2, 32, 4, 64, 0.1, 1e-12).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    queries, frames = torch.randn(3, 8, 32), torch.randn(3, 50, 32)
    expected = reference(queries, encoder_hidden_states=frames).last_hidden_state
    torch.testing.assert_close(ours(queries, frames), expected, atol=1e-5, rtol=1e-5)


def test_query_self_attention_is_bidirectional():
    torch.manual_seed(0)
    qformer = QFormer(1, 16, 2, 32, 0.0, 1e-12).eval()
    queries, frames = torch.randn(1, 4, 16), torch.randn(1, 10, 16)
    changed = queries.clone()
    changed[:, -1] += 1.0
    assert not torch.allclose(qformer(queries, frames)[:, 0], qformer(changed, frames)[:, 0])


def test_connector_shapes_names_and_fusion():
    torch.manual_seed(0)
    connector = QFormerConnector(num_taps=4, encoder_hidden=32, encoder_heads=4, llm_hidden=48, num_layers=2,
                                 prompt_size=8, ffn=64).eval()
    names = set(connector.state_dict())
    assert {"layer_prompts.3", "layer_weights", "proj.0.weight", "proj.1.weight",
            "qformer.layer.1.crossattention.self.value.bias", "qformer.layer.0.attention.output.LayerNorm.weight",
            "qformer.layer.1.intermediate.dense.weight", "qformer.layer.1.output.dense.weight"} <= names
    assert connector.layer_prompts[0].shape == (1, 8, 32) and connector.layer_weights.shape == (8, 4)
    taps = [torch.randn(2, 30, 32) for _ in range(4)]
    out = connector(taps)
    assert out.shape == (2, 8, 48)
    # Fusion weights start at zero -> a plain average of the per-tap Q-Former outputs.
    per_tap = [connector.qformer(p.expand(2, -1, -1), t) for p, t in zip(connector.layer_prompts, taps)]
    torch.testing.assert_close(out, connector.proj(torch.stack(per_tap).mean(0)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="expected 4 tapped layers"):
        connector(taps[:3])


def test_release_sized_connector_has_the_published_parameter_count():
    connector = QFormerConnector(num_taps=4, encoder_hidden=1280, encoder_heads=20, llm_hidden=4096, num_layers=6)
    count = sum(p.numel() for p in connector.parameters())
    assert round(count / 1e6, 1) == 131.5  # SPEC: ~131.5M trainable parameters in the release


def test_training_attention_draws_the_same_dropout_as_scaled_dot_product_attention():
    q, k, v = torch.randn(2, 4, 8, 16), torch.randn(2, 4, 30, 16), torch.randn(2, 4, 30, 16)
    torch.manual_seed(3)
    expected = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
    torch.manual_seed(3)
    got = _attention_with_dropout(q, k, v, 0.3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.manual_seed(4)
    assert not torch.allclose(_attention_with_dropout(q, k, v, 0.3), expected)  # another draw, another mask
