import pytest
import torch
from torch import nn

from desta_audio.few_rows_linear import FEW_ROWS, FewRowsLinear, use_few_rows_linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7,), (1, 7), (4, 7), (2, 3, 7), (FEW_ROWS, 7), (FEW_ROWS + 1, 7), (0, 7)])
def test_same_values_shape_and_gradients_as_nn_linear(bias, shape):
    torch.manual_seed(0)
    plain = nn.Linear(7, 5, bias=bias)
    fast = use_few_rows_linear(nn.Sequential(nn.Linear(7, 5, bias=bias)))[0]
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(*shape, requires_grad=True)
    x_fast = x.detach().clone().requires_grad_()
    expected, got = plain(x), fast(x_fast)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected)
    expected.sum().backward()
    got.sum().backward()
    torch.testing.assert_close(x_fast.grad, x.grad)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad)


def test_swap_keeps_parameters_state_dict_and_leaves_other_layers(monkeypatch):
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Sequential(nn.Linear(4, 2, bias=False)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[0].weight
    use_few_rows_linear(model)
    assert type(model[0]) is FewRowsLinear and type(model[2][0]) is FewRowsLinear
    assert isinstance(model[0], nn.Linear) and type(model[1]) is nn.LayerNorm
    assert model[0].weight is weight and model.state_dict().keys() == before.keys()

    calls = []  # few fp32 rows take the weight-side product; many rows and bf16 the usual one
    real_addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(1) or real_addmm(*a, **k))
    model[0](torch.randn(3, 4))
    assert calls == [1]
    model[0](torch.randn(FEW_ROWS + 1, 4))
    model.to(torch.bfloat16)[0](torch.randn(3, 4, dtype=torch.bfloat16))
    assert calls == [1]


def test_loaded_models_use_it(tiny):
    assert type(tiny.llm_model.lm_head) is FewRowsLinear
    assert type(tiny.perception.whisper.model.decoder.layers[0].fc1) is FewRowsLinear


def test_vocabulary_head_layout_hook_is_registered_once(tiny):
    head = tiny.llm_model.get_output_embeddings()
    hooks = len(head._forward_pre_hooks)
    assert hooks >= 1  # registered when the model was built
    use_few_rows_linear(tiny.llm_model)
    assert len(head._forward_pre_hooks) == hooks
