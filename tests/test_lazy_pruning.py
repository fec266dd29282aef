"""Values carried beside their alternative (``pyro_grad.engine.lazy_pruning.Alternative``):
every operation is done on both paths; what cannot be carried is refused, naming why.

Three particles (the leading dim); the alternative path differs at particle 1 only.
"""

import pytest
import torch

from pyro_grad.engine.lazy_pruning import Alternative, Unsupported, World


def carried():
    world = World(3)
    return world, Alternative(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 5.0, 3.0]), world)


def test_an_operation_is_done_on_both_paths():
    # 2a + 1: first path [3, 5, 7], alternative [3, 11, 7]; exp broadcasts with a plain tensor.
    _, a = carried()
    b = 2 * a + 1
    assert isinstance(b, Alternative)
    assert torch.equal(b._t, torch.tensor([3.0, 5.0, 7.0])) and torch.equal(b._alt, torch.tensor([3.0, 11.0, 7.0]))
    c = torch.stack([a, torch.zeros(3)], -1)  # (3, 2): the particles stay the leading dim
    assert torch.equal(c._alt[:, 0], a._alt) and c.shape == (3, 2)


def test_a_value_a_jump_reaches_stays_carried_even_where_its_paths_agree():
    # a·0 is 0 on both paths, and a > 0 is True on both, yet both come from a: whether Python
    # may read a value must not depend on the run's own random choices (module docs), so
    # they stay carried and a read of them is refused. A value that ignores a is plain.
    _, a = carried()
    assert isinstance(a * 0, Alternative) and isinstance(a[:, None][:, 0], Alternative)
    with pytest.raises(Unsupported, match=r"Python reads a value \(tolist\) that a jump reaches"):
        (a * 0).tolist()  # [0, 0, 0] on both paths
    with pytest.raises(Unsupported, match="Python reads a value"):
        (a > 0).tolist()  # all True on both paths, but read from a
    assert type(torch.zeros(3).type_as(a)) is torch.Tensor  # takes only a's dtype
    assert a.shape == (3,) and a.dim() == 1  # a shape is not a read of values


def test_what_cannot_be_carried_is_refused_naming_why():
    _, a = carried()
    with pytest.raises(Unsupported, match="without the 3 particles as its leading dim"):
        a.sum()  # 6 against 9: a sum over particles mixes them
    looped = Alternative(torch.tensor(2.0), torch.tensor(5.0), World(None))  # one particle, no dim
    with pytest.raises(Unsupported, match="Python reads a value"):
        bool(looped > 2)  # False, and True on the alternative path: an if could branch otherwise
    with pytest.raises(Unsupported, match="draws from a value"):
        torch.bernoulli(a / 10)
    plain = torch.zeros(3)
    with pytest.raises(Unsupported, match="into a tensor that does not carry one"):
        plain += a
    with pytest.raises(Unsupported, match="fails on the alternative path"):
        torch.zeros(3)[a.long() - 1]  # index 4 exists on the alternative path only


def test_the_world_sees_which_particles_differ_and_resets_them():
    # Only particle 1 differs; after a reset at particle 1 nothing does.
    world, a = carried()
    b = a * 2
    assert world.alive().tolist() == [False, True, False]
    world.reset(torch.tensor([False, True, False]))
    assert torch.equal(a._alt, a._t) and torch.equal(b._alt, b._t)
    assert world.alive().tolist() == [False, False, False]


# Stacked paths: World(3, paths=2) carries two alternative paths per particle, stacked on
# a new leading dim; path 0 differs at particle 1, path 1 at particle 2.

def stacked():
    world = World(3, paths=2)
    first, paths = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[1.0, 5.0, 3.0], [1.0, 2.0, 7.0]])
    return world, Alternative(first, paths.clone(), world), first, paths


OPERATIONS = {
    "pointwise": lambda x: 2 * x.exp() - x / 3,
    "where": lambda x: torch.where(x > 2, x, -x),
    "stack and sum": lambda x: torch.stack([x, x**2], -1).sum(-1),
    "expand": lambda x: x.unsqueeze(-1).expand(3, 4) * torch.arange(4.0),
    "reshape and cumsum": lambda x: x.reshape(3, 1, 1).expand(3, 2, 1).cumsum(1)[:, :, 0],
    "cat and index": lambda x: torch.cat([x.unsqueeze(-1), x.unsqueeze(-1) ** 2], -1)[..., 1],
    "positive dims": lambda x: torch.stack([x, 2 * x], 1).flip(1).select(1, 0).unsqueeze(1).sum(1),
    "in place": lambda x: x.clone().mul_(2).add_(torch.ones(3)),
}


@pytest.mark.parametrize("operation", OPERATIONS, ids=str)
def test_each_stacked_path_is_the_operation_on_that_path_alone(operation):
    # Whatever the operation's dims and shapes, path k of the stacked result is what one
    # path carrying path k's values gives (dims mean what they mean on the first path).
    world, a, first, paths = stacked()
    result = OPERATIONS[operation](a)
    assert isinstance(result, Alternative) and result._alt.shape == (2,) + result._t.shape
    assert torch.equal(result._t, OPERATIONS[operation](first))
    for k in range(2):
        alone = OPERATIONS[operation](Alternative(first, paths[k].clone(), World(3)))
        assert torch.allclose(result._alt[k], alone._alt)


def test_stacked_paths_describe_a_value_by_its_first_path_and_refuse_to_read_it():
    world, a, _, _ = stacked()
    assert a.shape == (3,) and a.dim() == 1 and len(a) == 3 and a.numel() == 3
    with pytest.raises(Unsupported, match="Python reads a value"):
        (a > 0).tolist()  # all True on every path, but a jump reaches it
    looped = Alternative(torch.tensor(2.0), torch.tensor([2.0, 5.0]), World(None, paths=2))
    with pytest.raises(Unsupported, match="Python reads a value"):
        bool(looped > 2)  # False, and True on path 1
    grown = looped.expand(3)  # one particle with no dim: expand adds the value's only dim
    assert torch.equal(grown._alt, torch.tensor([[2.0] * 3, [5.0] * 3]))


def test_the_world_sees_which_chains_differ_and_resets_them():
    # Chains are path-major: (path 0: particles 0, 1, 2), (path 1: particles 0, 1, 2).
    world, a, first, paths = stacked()
    b = a + 1
    assert world.alive().tolist() == [False, True, False, False, False, True]
    world.reset(torch.tensor([False, True, False, False, False, False]))
    assert torch.equal(a._alt[0], first) and torch.equal(a._alt[1], paths[1])
    assert torch.equal(b._alt[0], first + 1)
    assert world.alive().tolist() == [False, False, False, False, False, True]


def test_a_plain_value_converted_like_a_carried_one_stays_plain():
    # zeros.type_as(a) takes a's dtype only: nothing to carry; a mask that differs by
    # path fills a plain tensor differently on each.
    world, a, _, _ = stacked()
    assert type(torch.zeros(3).type_as(a)) is torch.Tensor
    filled = torch.zeros(3).masked_fill(a > 4, 1.0)
    assert torch.equal(filled._t, torch.zeros(3))
    assert torch.equal(filled._alt, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))


def test_a_reduction_along_the_last_dim_of_a_value_with_no_dims_keeps_the_paths_apart():
    # One particle with no dim: its paths' stack is (paths,), whose last dim is the paths'.
    # cumsum(-1) and softmax(-1) of a scalar are the scalar and 1 on every path.
    looped = Alternative(torch.tensor(2.0), torch.tensor([2.0, 5.0, 7.0]), World(None, paths=3))
    assert torch.equal(looped.cumsum(-1)._alt, torch.tensor([2.0, 5.0, 7.0]))
    assert torch.equal(torch.softmax(looped, -1)._alt, torch.ones(3))


def test_an_expanded_carried_value_is_reset_by_replacing_its_alternatives():
    # a.unsqueeze(-1).expand(3, 4) shares memory along its last dim: it cannot be written
    # in place, so a reset replaces its alternatives; an ordinary one is written in place.
    world, a = carried()
    wide = a.unsqueeze(-1).expand(3, 4)
    assert wide._alt.stride()[-1] == 0
    world.reset(torch.tensor([False, True, False]))
    assert torch.equal(wide._alt, wide._t) and torch.equal(a._alt, a._t)
