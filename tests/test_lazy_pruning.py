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


def test_a_value_the_same_on_both_paths_is_a_plain_tensor():
    # a·0 is 0 on both paths, and a[0] is 1 on both: nothing to carry, and Python may read it.
    _, a = carried()
    assert type(a * 0) is torch.Tensor
    assert float(a[0]) == 1.0
    assert bool((a > 0).all())  # True on both paths


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
