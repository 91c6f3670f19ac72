"""backend/interact/transform.py (paper Eq. 2): positions, quaternions and Σ' = AΣAᵀ after a 4×4 affine."""

import math

import pytest
import torch
from interactive3d.backend.interact import transform as T
from interactive3d.backend.maths import rotations as Rot
from interactive3d.backend.stage1 import gaussians as G


def _one_gaussian(scales=(0.1, 0.02, 0.05), quat=(0.9, 0.1, -0.3, 0.2), mean=(0.3, -0.2, 0.1)):
    return G.Gaussians.from_activated(
        torch.tensor([mean]), torch.full((1, 3), 0.5), torch.tensor([0.5]), torch.tensor([scales]),
        quats=torch.tensor([quat]),
    )


def _affine(a, t=(0.0, 0.0, 0.0)):
    m = torch.eye(4)
    m[:3, :3] = torch.as_tensor(a, dtype=torch.float32)
    m[:3, 3] = torch.tensor(t)
    return m


def _cov(g):
    return Rot.quat_scale_to_covar(g.rotations.detach().double(), g.scales.detach().double())


def test_stretch_matches_analytic_covariance():
    """Anisotropic stretch + shear of one Gaussian: Σ' equals AΣAᵀ to 1e-5 (issue 4), μ' = A(μ−c)+c+t."""
    g = _one_gaussian()
    cov0 = _cov(g)
    a = torch.tensor([[2.0, 0.3, 0.0], [0.0, 0.5, 0.1], [0.2, 0.0, 1.5]])
    pivot = torch.tensor([0.1, 0.1, 0.1])
    mu0 = g.means.detach().clone()
    res = T.transform_part(g, torch.ones(1, dtype=torch.bool), _affine(a, (1.0, 2.0, 3.0)), pivot=pivot)
    assert not res.similarity
    expected = a.double() @ cov0[0] @ a.double().T
    assert torch.allclose(_cov(g)[0], expected, atol=1e-5, rtol=0)
    mu_expected = (mu0[0] - pivot) @ a.T + pivot + torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(g.means.detach()[0], mu_expected, atol=1e-6)


@pytest.mark.parametrize("mirror", [False, True])
def test_similarity_composes_quaternion(mirror):
    """Rotation × uniform scale (and its mirror): quaternion path, Σ' = AΣAᵀ to 1e-5, scales × s."""
    g = _one_gaussian()
    cov0 = _cov(g)
    s0 = g.scales.detach().clone()
    r = Rot.quat_to_rotmat(torch.tensor([[0.3, -0.5, 0.7, 0.2]]))[0]
    a = (-1.7 if mirror else 1.7) * r
    res = T.transform_part(g, torch.ones(1, dtype=torch.bool), _affine(a))
    assert res.similarity
    assert torch.allclose(_cov(g)[0], a.double() @ cov0[0] @ a.double().T, atol=1e-5, rtol=0)
    assert torch.allclose(g.scales.detach(), s0 * 1.7, rtol=1e-5)
    # bbox centre pivot of a single Gaussian is itself: it does not move.
    assert torch.allclose(g.means.detach(), torch.tensor([[0.3, -0.2, 0.1]]), atol=1e-7)


def test_only_part_changes_and_moments_reset():
    """Rows outside the part are bit-identical; Adam moments of transformed rows are zero."""
    g = G.init_random(200, seed=3)
    opt = G.make_optimizers(g)
    (g.means.sum() + g.scales.sum() + g.rotations.sum()).backward()
    for o in opt.values():
        o.step()
    part = torch.arange(200) < 50
    snap = g.snapshot()
    T.transform_part(g, part, _affine(torch.diag(torch.tensor([1.0, 2.0, 0.5])), (0.1, 0, 0)), optimizers=opt)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert torch.equal(g.params[name].detach()[~part], torch.from_numpy(snap[f"param/{name}"])[~part])
    assert not torch.equal(g.params["means"].detach()[part], torch.from_numpy(snap["param/means"])[part])
    assert opt["means"].state[g.params["means"]]["exp_avg"][part].abs().max() == 0
    assert opt["means"].state[g.params["means"]]["exp_avg"][~part].abs().max() > 0


def test_bbox_pivot_keeps_centre_fixed():
    """About B(P)'s centre, a rotation leaves the bbox centre where it was (error < 1e-6)."""
    g = G.init_random(100, seed=1)
    part = torch.ones(100, dtype=torch.bool)
    c0 = T.bbox_center(g.means.detach())
    rot = Rot.quat_to_rotmat(torch.tensor([[math.cos(0.25 * math.pi), 0.0, 0.0, math.sin(0.25 * math.pi)]]))[0]
    res = T.transform_part(g, part, _affine(rot))
    assert torch.allclose(res.pivot, c0, atol=1e-7)
    # A 90° turn about z maps an axis-aligned box to an axis-aligned box with the same centre.
    assert torch.allclose(T.bbox_center(g.means.detach()), c0, atol=1e-6)


@pytest.mark.parametrize(
    "matrix, message",
    [
        (torch.diag(torch.tensor([1.0, 0.0, 1.0, 1.0])), "singular"),
        (torch.full((4, 4), float("nan")), "finite"),
        (torch.ones(4, 4), "affine"),
        (torch.eye(3), "shape"),
    ],
)
def test_bad_matrix_changes_nothing(matrix, message):
    """Singular, NaN, non-affine or mis-shaped matrices raise ValueError naming the problem; state unchanged."""
    g = G.init_random(20, seed=0)
    snap = g.snapshot()
    with pytest.raises(ValueError, match=message):
        T.transform_part(g, torch.ones(20, dtype=torch.bool), matrix)
    for k, v in snap.items():
        if k.startswith("param/"):
            assert torch.equal(g.params[k[6:]].detach(), torch.from_numpy(v))


def test_empty_part_rejected():
    g = G.init_random(10, seed=0)
    with pytest.raises(ValueError, match="empty"):
        T.transform_part(g, torch.zeros(10, dtype=torch.bool), torch.eye(4))


def test_rotmat_quat_round_trip():
    """rotmat_to_quat inverts quat_to_rotmat to 1e-7 in float64 (below float32 storage) on random rotations,
    half turns and near-half turns."""
    q = torch.randn(2000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q[:500, 0] *= 1e-4  # near half turns: w tiny but not zero
    special = [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.6, -0.8, 0.0], [1e-5, 0.3, 0.4, -0.866], [0.0, -0.5, 0.5, 0.7071]]
    q = torch.cat([q, torch.tensor(special, dtype=torch.float64)])
    r = Rot.quat_to_rotmat(q)
    assert (Rot.quat_to_rotmat(Rot.rotmat_to_quat(r)) - r).abs().max() < 1e-7


def test_stretch_refactorisation_reproduces_a_sigma_a_transpose():
    """The component-wise, chunked stretch path: scales and quats whose covariance equals A Σ Aᵀ (built
    with batched matrix products) to 1e-8 relative (needles: 7e-9 here, 3e-9 through torch.linalg), for
    a shear-and-stretch A on 20000 random Gaussians (more than one STRETCH_CHUNK) including flat (1e-4)
    and needle-like ones."""
    gen = torch.Generator().manual_seed(1)
    s = torch.rand(20000, 3, dtype=torch.float64, generator=gen) * 0.05 + 0.01
    s[:500, 2] = 1e-4
    s[500:1000, :2] = 1e-4
    q = torch.randn(20000, 4, dtype=torch.float64, generator=gen)
    a = torch.tensor([[1.5, 0.3, 0.0], [0.0, 0.8, 0.2], [0.1, 0.0, 2.0]], dtype=torch.float64)
    want = a @ Rot.quat_scale_to_covar(q, s) @ a.T
    new_s, new_q = Rot.stretch_factor(a, s, q)
    got = Rot.quat_scale_to_covar(new_q, new_s)
    assert ((got - want).abs().amax((1, 2)) / want.abs().amax((1, 2))).max() < 1e-8
    assert torch.allclose(new_q.norm(dim=-1), torch.ones(20000, dtype=torch.float64), atol=1e-12)


def test_stretch_of_isotropic_gaussians():
    """Stretching isotropic Gaussians (degenerate eigenvalues) by diag(3,1,1): scales become (3s, s, s)."""
    g = G.init_random(50, seed=2)
    s = g.scales.detach()[:, 0].clone()
    T.transform_part(g, torch.ones(50, dtype=torch.bool), _affine(torch.diag(torch.tensor([3.0, 1.0, 1.0]))))
    assert torch.allclose(g.scales.detach().sort(dim=1).values, torch.stack([s, s, 3 * s], 1), rtol=1e-5)


@pytest.mark.parametrize("degree", [1, 2, 3])
@pytest.mark.parametrize("kind", ["rotation", "mirror", "rotate-and-stretch"])
def test_view_dependent_colour_turns_with_the_part(degree, kind):
    """After a transform with orthogonal factor O, the SH colour of each Gaussian seen along d equals
    the colour it had along Oᵀd (to 1e-5 in float32) for every degree; the DC band is untouched. For a
    rotation (and a mirror) O = A/s; for a rotate-then-stretch A = R·diag(2,1,1)·… O is the polar factor."""
    from interactive3d.backend.stage1.render import sh_basis

    g = G.init_random(40, seed=3, sh_degree=degree)
    with torch.no_grad():
        g.params["sh"].normal_(generator=torch.Generator().manual_seed(4))
    before = g.params["sh"].detach().double().clone()
    r = Rot.quat_to_rotmat(torch.tensor([[0.8, 0.2, -0.5, 0.3]], dtype=torch.float64))[0]
    a = {"rotation": 1.5 * r, "mirror": r @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)),
         "rotate-and-stretch": r @ torch.diag(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64))}[kind]
    T.transform_part(g, torch.ones(40, dtype=torch.bool), _affine(a.float()))
    after = g.params["sh"].detach().double()
    o = T.orthogonal_factor(a)
    if kind != "rotate-and-stretch":
        assert torch.allclose(o, a / torch.linalg.det(a).abs() ** (1 / 3), atol=1e-12)
    d = T._fibonacci_dirs(50)
    colour = lambda sh, dirs: torch.einsum("dk,nkc->ndc", sh_basis(degree, dirs), sh)  # noqa: E731
    assert (colour(after, d) - colour(before, d @ o)).abs().max() < 1e-5
    assert torch.equal(after[:, 0], before[:, 0])
