"""``i3d eval clip-r-precision`` (the paper's Table 1 protocol) with a tiny CLIP built from configs: its two
projections are solved so that the prompts embed to orthonormal vectors and each object's renders embed to
chosen vectors, which makes every rank and the score exactly known before the command runs."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from interactive3d.backend.stage1.gaussians import Gaussians
from interactive3d.backend.stage1.init import save_ply
from interactive3d.evaluate import (
    ClipScorer,
    EvalInputError,
    ViewConfig,
    find_objects,
    r_precision,
    read_prompts,
    render_views,
)

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "backend"))
from _tiny_diffusion import tiny_clip_tokenizer  # noqa: E402

PROMPTS = ["a red cube", "a green ball", "a blue cone"]
VIEWS = ViewConfig(views=2, resolution=32)


def test_r_precision_of_orthogonal_embeddings_is_exact():
    """Prompts e0, e1, e2; object 0 looks like e0 (rank 1), object 1 like 0.8·e2 + 0.6·e1 (its prompt second:
    rank 2), object 2 like e2 (rank 1): R@1 = 2/3. Per view (object 2's second view e2 + 0.1·e0 still ranks 1): 4/6.
    A tie counts against the object: an image equidistant to e0 and e1 ranks 2 for prompt 0."""
    e = torch.eye(3)
    img = torch.stack([
        torch.stack([e[0], e[0]]),
        torch.stack([0.8 * e[2] + 0.6 * e[1]] * 2),
        torch.stack([e[2] * 2.0, e[2] + 0.1 * e[0]]),
    ])
    res = r_precision(img, e)
    assert res.ranks == [1, 2, 1] and res.score == pytest.approx(2 / 3, abs=0)
    assert res.view_ranks == [[1, 1], [2, 2], [1, 1]] and res.per_view_score == pytest.approx(4 / 6, abs=0)
    tie = r_precision(torch.stack([(e[0] + e[1])[None], e[1][None]]).narrow(2, 0, 2), e[:2, :2])
    assert tie.ranks == [2, 1]
    with pytest.raises(ValueError, match="at least 2"):
        r_precision(img[:1], e[:1])
    with pytest.raises(ValueError, match="P,V,D"):
        r_precision(img, e[:2])


def _objects(folder):
    """Three different coloured blobs: 000.ply, 001/splats.ply (as i3d generate writes), 002.ply."""
    gen = torch.Generator().manual_seed(0)
    paths = [folder / "000.ply", folder / "001" / "splats.ply", folder / "002.ply"]
    for i, path in enumerate(paths):
        n = 200
        means = (torch.rand(n, 3, generator=gen) - 0.5) * (0.6 + 0.3 * i)
        colors = torch.zeros(n, 3)
        colors[:, i] = 0.9
        g = Gaussians.from_activated(means, colors, torch.full((n,), 0.8), torch.full((n, 3), 0.05))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_ply(g, path)
    return paths


def _tiny_clip(folder, objects):
    """A CLIPModel from a tiny config whose projections map the 3 prompts to e0, e1, e2 exactly (least squares
    on the 32-d pooled outputs, 3 ≤ 32 independent columns) and the 2 views of object i to a chosen target."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        projection_dim=8,
    )
    model = CLIPModel(cfg).eval()
    tok = tiny_clip_tokenizer()
    scorer = ClipScorer(model, tok)
    e = torch.eye(8, dtype=torch.float64)
    targets = [e[0], 0.8 * e[2] + 0.6 * e[1], e[2]]  # object 1 looks more like prompt 2 than its own
    with torch.no_grad():
        t = tok(PROMPTS, padding=True, return_tensors="pt")
        pooled_t = model.text_model(input_ids=t.input_ids, attention_mask=t.attention_mask).pooler_output.double()  # [3,32]
        model.text_projection.weight.copy_((e[:3].T @ torch.linalg.pinv(pooled_t.T)).float())
        from interactive3d.backend.stage1.init import load_ply

        images = torch.cat([render_views(load_ply(p), VIEWS) for p in objects])  # [6,32,32,3]
        pooled_v = model.vision_model(pixel_values=scorer.preprocess(images)).pooler_output.double()  # [6,32]
        want = torch.stack([targets[i // 2] for i in range(6)])  # [6,8]
        model.visual_projection.weight.copy_((want.T @ torch.linalg.pinv(pooled_v.T)).float())
        # the solve is exact: the embeddings are the targets up to float32 rounding
        assert torch.allclose(scorer.embed_text(PROMPTS).double(), e[:3], atol=1e-4)
        assert torch.allclose(scorer.embed_images(images).double(), torch.nn.functional.normalize(want, dim=-1), atol=1e-4)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cli_reports_exact_score_and_ranks(tmp_path):
    """The command line end to end (renders from 2 fixed views, 32², tiny CLIP saved to a folder and loaded with
    from_pretrained): R@1 = 2/3, ranks [1, 2, 1], object 1 retrieves 'a blue cone', per-view score 4/6."""
    from interactive3d.cli import main

    objects = _objects(tmp_path / "objects")
    clip = _tiny_clip(tmp_path / "clip", objects)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# three prompts\n" + "\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "report.json"
    rc = main(["eval", "clip-r-precision", str(prompts), "--objects", str(tmp_path / "objects"), "--clip", str(clip),
               "--local-files-only", "--views", "2", "--resolution", "32", "--out", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["score"] == pytest.approx(2 / 3, abs=1e-12) and rep["per_view_score"] == pytest.approx(4 / 6, abs=1e-12)
    assert [p["rank"] for p in rep["prompts"]] == [1, 2, 1]
    assert [p["view_ranks"] for p in rep["prompts"]] == [[1, 1], [2, 2], [1, 1]]
    assert rep["prompts"][1]["retrieved"] == "a blue cone" and rep["prompts"][1]["similarity"] == pytest.approx(0.6, abs=1e-3)
    assert rep["prompts"][1]["object"].endswith("001/splats.ply") and rep["views"]["views"] == 2


def test_bad_inputs_are_reported(tmp_path, capsys):
    from interactive3d.cli import main

    (tmp_path / "one.txt").write_text("only one\n")
    with pytest.raises(EvalInputError, match="at least 2"):
        read_prompts(tmp_path / "one.txt")
    (tmp_path / "dup.json").write_text('["a", "a"]')
    with pytest.raises(EvalInputError, match="duplicate"):
        read_prompts(tmp_path / "dup.json")
    (tmp_path / "objs").mkdir()
    with pytest.raises(EvalInputError, match="000.ply or 000/splats.ply"):
        find_objects(tmp_path / "objs", 2)
    (tmp_path / "p.txt").write_text("a\nb\n")
    rc = main(["eval", "clip-r-precision", str(tmp_path / "p.txt"), "--objects", str(tmp_path / "objs"),
               "--clip", str(tmp_path / "no-clip"), "--local-files-only", "--out", str(tmp_path / "r.json")])
    assert rc == 2 and "CLIP model" in capsys.readouterr().err and not (tmp_path / "r.json").exists()


def test_builtin_objects50_prompts_parse_and_reach_the_cli(tmp_path, capsys, monkeypatch):
    """The shipped list (interactive3d/data/objects50.txt, not the paper's list: its header says so) has 50
    unique single-object prompts, none with the batch files' ';' option separator; the CLI takes it by its short
    name (3 objects for 50 prompts: 47 missing), pyproject ships it as package data, and a file of that name
    in the working directory wins over the built-in list."""
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    from interactive3d.cli import main
    from interactive3d.evaluate import BUILTIN_PROMPTS, resolve_prompts

    path = resolve_prompts("objects50")
    assert path.is_file() and path.name == BUILTIN_PROMPTS["objects50"]
    header = " ".join(line.lstrip("# ") for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#"))
    assert "This is NOT the paper's list" in header and "Scores on this file are NOT comparable to the paper's Table 1" in header
    prompts = read_prompts("objects50")
    assert len(prompts) == len(set(prompts)) == 50 and all(";" not in p and 3 <= len(p.split()) <= 10 for p in prompts)
    assert read_prompts(path) == prompts

    root = Path(__file__).resolve().parents[2]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["interactive3d"]
    rel = path.relative_to(root / "interactive3d").as_posix()
    assert any(fnmatch(rel, pattern) for pattern in package_data), (rel, package_data)

    objects = _objects(tmp_path / "objects")
    clip = _tiny_clip(tmp_path / "clip", objects)
    rc = main(["eval", "clip-r-precision", "objects50", "--objects", str(tmp_path / "objects"), "--clip", str(clip),
               "--local-files-only", "--views", "2", "--resolution", "32", "--out", str(tmp_path / "r.json")])
    assert rc == 2 and "no object for 47 prompt(s)" in capsys.readouterr().err and not (tmp_path / "r.json").exists()

    monkeypatch.chdir(tmp_path)
    (tmp_path / "objects50").write_text("a\nb\n")
    assert read_prompts("objects50") == ["a", "b"]
