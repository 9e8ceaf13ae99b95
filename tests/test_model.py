import msgspec
import torch

from dualhrq.model import ACTIONS, HRM, ModelInputs
from dualhrq.model.diagnostics import convergence_diagnostics
from dualhrq.model.vocab import UNKNOWN_ID, InstrumentVocab
from dualhrq.seeding import seed_everything


def make(cfg, seed=0):
    torch.manual_seed(seed)
    return HRM(cfg.model)


def test_forward_and_backward_shapes(tiny_config):
    m = make(tiny_config).train()
    c = tiny_config.model
    x = ModelInputs.random(c, 3)
    carry, out = m(x, m.initial_carry(3))
    assert out.policy_logits.shape == (3, len(ACTIONS)) and out.q_logits.shape == (3, 2)
    assert out.regime_logits.shape == (3, c.num_regimes)
    assert carry.z_H.shape == (3, c.coarse_len, c.h_module.hidden_dim)
    assert carry.z_L.shape == (3, c.fine_len, c.l_module.hidden_dim)
    assert ((out.quantity >= c.quantity_min) & (out.quantity <= c.quantity_max)).all()
    loss = out.policy_logits.logsumexp(-1).mean() + out.forecast_fine.pow(2).mean() + out.value.mean()
    loss.backward()
    assert all(p.grad is not None for p in m.l_module.parameters())


def test_only_last_l_step_and_last_h_update_carry_gradient(tiny_config):
    m = make(tiny_config).train()
    grads = {"l": [], "h": []}
    m.l_module.register_forward_hook(lambda mod, i, o: grads["l"].append(o.requires_grad))
    m.h_module.register_forward_hook(lambda mod, i, o: grads["h"].append(o.requires_grad))
    m(ModelInputs.random(tiny_config.model, 2), m.initial_carry(2))
    n, t = tiny_config.model.n_cycles, tiny_config.model.t_steps
    assert grads["l"] == [False] * (n * t - 1) + [True]
    assert grads["h"] == [False] * (n - 1) + [True]


def test_q_head_initialised_like_reference(tiny_config):
    m = make(tiny_config)
    assert torch.all(m.heads.q.weight == 0) and torch.all(m.heads.q.bias == -5)
    _, out = m(ModelInputs.random(tiny_config.model, 2), m.initial_carry(2))
    assert torch.allclose(out.q_logits, torch.full_like(out.q_logits, -5.0))


def test_all_masked_patterns_equal_regime_only_output_exactly(tiny_config):
    m = make(tiny_config).eval()
    a = ModelInputs.random(tiny_config.model, 2, seed=1, patterns=False)
    b = ModelInputs.random(tiny_config.model, 2, seed=1, patterns=False)
    b.pattern_context = torch.randn_like(b.pattern_context) * 100  # garbage behind a full mask
    regime_only = ModelInputs.random(tiny_config.model, 2, seed=1, patterns=False)
    regime_only.pattern_context = torch.zeros_like(regime_only.pattern_context)
    outs = [m(x, m.initial_carry(2))[1] for x in (a, b, regime_only)]
    for o in outs[1:]:
        assert torch.equal(o.policy_logits, outs[0].policy_logits)
        assert torch.equal(o.forecast_fine, outs[0].forecast_fine)


def test_film_reacts_to_pattern_context(tiny_config):
    m = make(tiny_config).eval()
    a = ModelInputs.random(tiny_config.model, 2, seed=1)
    b = ModelInputs.random(tiny_config.model, 2, seed=1)
    b.pattern_context = b.pattern_context + 1.0
    oa, ob = (m(x, m.initial_carry(2))[1] for x in (a, b))
    assert not torch.allclose(oa.policy_logits, ob.policy_logits)


def test_grow_instruments_keeps_existing_rows(tiny_config):
    m = make(tiny_config)
    old = m.input.instrument.weight.detach().clone()
    m.grow_instruments(old.shape[0] + 10)
    new = m.input.instrument.weight
    assert new.shape[0] == old.shape[0] + 10 and m.cfg.instrument_vocab == old.shape[0] + 10
    assert torch.equal(new[: old.shape[0]], old)
    assert torch.equal(new[-1], old[0])  # a new instrument starts as "unknown"
    x = ModelInputs.random(m.cfg, 2)
    x.instrument_id[:] = old.shape[0] + 5
    m(x, m.initial_carry(2))  # new ids are usable at once


def test_a_new_instrument_gets_the_next_row_and_known_ones_keep_theirs():
    vocab = InstrumentVocab(["AAPL", "MSFT"])
    assert (vocab.id("AAPL"), vocab.id("MSFT"), vocab.id("TSLA")) == (1, 2, UNKNOWN_ID)
    assert vocab.add("TSLA") == 3 and vocab.add("AAPL") == 1  # adding a known name changes nothing
    assert len(vocab) == 4 and vocab.names() == ["AAPL", "MSFT", "TSLA"]  # 4 rows: the unknown row first


def test_same_seed_gives_bit_identical_outputs(tiny_config):
    outs = []
    for _ in range(2):
        seed_everything(7)
        m = HRM(tiny_config.model).train()
        x = ModelInputs.random(tiny_config.model, 2, seed=3)
        outs.append(m(x, m.initial_carry(2))[1].policy_logits)
    assert torch.equal(outs[0], outs[1])


def test_carry_changes_the_next_segment(tiny_config):
    m = make(tiny_config).eval()
    x = ModelInputs.random(tiny_config.model, 2)
    c1, o1 = m(x, m.initial_carry(2))
    _, o2 = m(x, c1)
    assert not torch.allclose(o1.policy_logits, o2.policy_logits)


def test_convergence_diagnostics_shape(tiny_config):
    m = make(tiny_config)
    rep = convergence_diagnostics(m, ModelInputs.random(tiny_config.model, 2))
    c = tiny_config.model
    assert len(rep.l_deltas) == c.n_cycles and all(len(x) == c.t_steps for x in rep.l_deltas)
    assert len(rep.h_norms) == c.n_cycles and all(h > 0 for h in rep.h_norms)
    assert all(0 <= d <= 2 for cyc in rep.l_deltas for d in cyc)


def test_config_is_frozen_and_replaceable(tiny_config):
    bigger = msgspec.structs.replace(tiny_config.model, n_cycles=3)
    assert HRM(bigger).cfg.n_cycles == 3


def test_graph_facing_forms_compute_what_the_plain_forms_do_on_the_same_weights(tiny_config):
    """Attention, RMSNorm and pattern pooling are written for the exported graph (constant reshapes, the
    fusable norm, a finite mask score); the same weights must give what the plain formulas give, so a
    checkpoint trained with the plain forms loads unchanged and means the same."""
    import math

    from dualhrq.model.conditioning import PatternPooling
    from dualhrq.model.layers import Attention, RMSNorm

    torch.manual_seed(0)
    b, s, d, heads = 3, 7, 12, 3
    x = torch.randn(b, s, d)
    attn = Attention(d, heads, s)
    qkv = attn.qkv(x).view(b, s, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    att = (qkv[0] @ qkv[1].transpose(-1, -2) / math.sqrt(d // heads)).softmax(-1)
    plain = attn.out((att @ qkv[2]).transpose(1, 2).reshape(b, s, d))
    torch.testing.assert_close(attn(x), plain, rtol=0, atol=1e-6)
    norm = RMSNorm(d)
    norm.weight.data.uniform_(0.5, 1.5)
    torch.testing.assert_close(norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight,
                               rtol=1e-6, atol=1e-6)
    pool = PatternPooling(8)
    context, mask = torch.randn(b, 5, 8), torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]).float()
    scores = pool.key(context) @ pool.query / math.sqrt(8)
    weights = torch.softmax(scores + (mask - 1.0) * 1e9, dim=-1) * mask
    torch.testing.assert_close(pool(context, mask), torch.einsum("bk,bkp->bp", weights, pool.value(context)),
                               rtol=0, atol=1e-6)
    assert torch.equal(pool(context, mask)[1], torch.zeros(8))  # all masked: exactly zero
