"""``i3d eval clip-r-precision``: the paper's quantitative evaluation (Table 1, CLIP R-Precision).

Protocol (DreamFusion's R-Precision as the paper uses it): a prompts file (the paper: 50 prompts derived
from Cap3D captions; any list works), one generated object per prompt, each rendered from fixed views;
CLIP embeds the renders and the prompts, and each object retrieves among *all* the prompts. An object's
rank is the position of its own prompt when the prompts are sorted by cosine similarity to the object
(1 = retrieved first; a tie counts against it). R-Precision (R@1) is the fraction of objects of rank 1.
Two variants are reported: ``score`` uses the object's embedding (the normalised mean of its views'
normalised embeddings), ``per_view_score`` retrieves with every view on its own and averages.

Inputs: a prompts file (UTF-8, one prompt per line; blank lines and ``#`` comments skipped, or a JSON
list of strings; ``objects50`` names the package's interactive3d/data/objects50.txt, 50 Cap3D-style
object prompts written for this project, not the paper's list) and a folder with object ``i`` (0-based, in prompt order) as ``NNN.ply`` or
``NNN/splats.ply`` (what ``i3d generate --out DIR/NNN`` writes), NNN = i zero-padded to 3 digits. Any
local CLIP model (a ``transformers`` CLIPModel folder with its tokenizer, or a hub id in the cache).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

# CLIP's image normalisation (the statistics of its training images), as its image processor applies it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EvalInputError(ValueError):
    """The prompts file, the objects folder or the CLIP model is missing or malformed (message says which)."""


@dataclass(frozen=True)
class ViewConfig:
    """The fixed views each object is rendered from (orbit cameras around the origin, +Z up).

    Attributes:
        views: number of azimuths, evenly spaced from ``azimuth0_deg``.
        elevation_deg, distance, fov_deg: camera elevation, distance and horizontal field of view
            (inside Stage I's training ranges: objects of radius ~1).
        resolution: square render size (CLIP resizes to its own input size).
        background: RGB background in [0,1].
    """

    views: int = 4
    elevation_deg: float = 15.0
    distance: float = 1.8
    fov_deg: float = 50.0
    azimuth0_deg: float = 0.0
    resolution: int = 224
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not isinstance(self.views, int) or self.views < 1:
            raise ValueError(f"ViewConfig.views must be a positive integer, got {self.views!r}")
        if not isinstance(self.resolution, int) or not (8 <= self.resolution <= 2048):
            raise ValueError(f"ViewConfig.resolution must be in [8, 2048], got {self.resolution!r}")
        if not (math.isfinite(self.distance) and self.distance > 0 and 0 < self.fov_deg < 180):
            raise ValueError(f"ViewConfig: distance must be > 0 and fov in (0,180), got {self.distance}, {self.fov_deg}")

    def azimuths(self) -> list[float]:
        return [self.azimuth0_deg + 360.0 * k / self.views for k in range(self.views)]


@dataclass(frozen=True)
class RPrecision:
    """Retrieval results of P objects among their P prompts.

    Attributes:
        score: R@1 over objects (object embedding = mean of its views).
        per_view_score: R@1 over every (object, view) pair.
        ranks: [P] rank of each object's own prompt (1 = first).
        view_ranks: [P][V] rank of the object's prompt for each view.
        similarity: [P][P] cosine similarity object i ↔ prompt j.
    """

    score: float
    per_view_score: float
    ranks: list[int]
    view_ranks: list[list[int]]
    similarity: list[list[float]]


def _ranks(sim: Tensor) -> Tensor:
    """[..., P, P] similarities (row i: query i against every prompt) → [..., P] 1-based rank of prompt i
    for query i; prompts with an equal or higher similarity rank before it."""
    own = sim.diagonal(dim1=-2, dim2=-1)  # [..., P]
    ahead = (sim >= own[..., None]).sum(-1) - 1  # the prompt itself is always >= itself
    return ahead + 1


def r_precision(image_embeds: Tensor, text_embeds: Tensor) -> RPrecision:
    """CLIP R-Precision of P objects with V views each.

    Args:
        image_embeds: [P,V,D] image embeddings (any norm; normalised here).
        text_embeds: [P,D] prompt embeddings, row i the prompt of object i.
    """
    if image_embeds.ndim != 3 or text_embeds.ndim != 2 or image_embeds.shape[0] != text_embeds.shape[0] or image_embeds.shape[2] != text_embeds.shape[1]:
        raise ValueError(f"image_embeds must be [P,V,D] and text_embeds [P,D], got {tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}")
    if image_embeds.shape[0] < 2:
        raise ValueError("R-Precision needs at least 2 prompts (retrieval among one prompt is always right)")
    img = F.normalize(image_embeds.double(), dim=-1)
    txt = F.normalize(text_embeds.double(), dim=-1)
    obj = F.normalize(img.mean(1), dim=-1)  # [P,D]
    sim = obj @ txt.T  # [P,P]
    ranks = _ranks(sim)
    view_sim = torch.einsum("pvd,qd->vpq", img, txt)  # [V,P,P]
    view_ranks = _ranks(view_sim).T  # [P,V]
    return RPrecision(
        score=float((ranks == 1).double().mean()),
        per_view_score=float((view_ranks == 1).double().mean()),
        ranks=[int(r) for r in ranks],
        view_ranks=view_ranks.tolist(),
        similarity=sim.tolist(),
    )


# Prompt lists shipped with the package (interactive3d/data/), by the short name the CLI accepts.
# objects50: 50 single-object prompts in the style of Cap3D captions, written for this project; NOT the
# paper's 50 Cap3D-derived prompts (unpublished), so scores on it are not comparable to Table 1.
BUILTIN_PROMPTS = {"objects50": "objects50.txt"}


def resolve_prompts(name_or_path: str | os.PathLike) -> Path:
    """An existing file as given, else a built-in list's file by its short name (BUILTIN_PROMPTS)."""
    p = Path(name_or_path)
    if not p.is_file() and str(name_or_path) in BUILTIN_PROMPTS:
        return Path(__file__).resolve().parent / "data" / BUILTIN_PROMPTS[str(name_or_path)]
    return p


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a text file (one per line, ``#`` comments and blank lines skipped) or a JSON list;
    ``path`` may also name a built-in list (``objects50``)."""
    p = resolve_prompts(path)
    if not p.is_file():
        raise EvalInputError(f"prompts file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        try:
            prompts = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{p}: not valid JSON ({exc})") from exc
        if not isinstance(prompts, list) or not all(isinstance(x, str) for x in prompts):
            raise EvalInputError(f"{p}: a JSON prompts file must hold a list of strings")
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    prompts = [x.strip() for x in prompts]
    if any(not x for x in prompts):
        raise EvalInputError(f"{p}: empty prompt")
    if len(prompts) < 2:
        raise EvalInputError(f"{p}: R-Precision needs at least 2 prompts, got {len(prompts)}")
    if len(set(prompts)) != len(prompts):
        raise EvalInputError(f"{p}: duplicate prompts make retrieval ambiguous")
    return prompts


def find_objects(folder: str | os.PathLike, count: int) -> list[Path]:
    """The .ply of object i (i < count): ``NNN.ply`` or ``NNN/splats.ply`` in ``folder``."""
    root = Path(folder)
    if not root.is_dir():
        raise EvalInputError(f"objects folder not found: {root}")
    found, missing = [], []
    for i in range(count):
        for cand in (root / f"{i:03d}.ply", root / f"{i:03d}" / "splats.ply"):
            if cand.is_file():
                found.append(cand)
                break
        else:
            missing.append(f"{i:03d}.ply or {i:03d}/splats.ply")
    if missing:
        raise EvalInputError(f"{root}: no object for {len(missing)} prompt(s): {', '.join(missing[:5])}")
    return found


@torch.no_grad()
def render_views(g, cfg: ViewConfig = ViewConfig()) -> Tensor:
    """[V,H,W,3] renders of Gaussians ``g`` from the fixed views (rows top to bottom)."""
    from interactive3d.backend.stage1.cameras import orbit_cameras
    from interactive3d.backend.stage1.render import render

    v = cfg.views
    cams = orbit_cameras(
        torch.full((v,), cfg.elevation_deg), torch.tensor(cfg.azimuths()), torch.full((v,), cfg.distance),
        torch.full((v,), cfg.fov_deg), cfg.resolution, cfg.resolution,
    ).to(g.device)
    bg = torch.tensor(cfg.background, dtype=torch.float32, device=g.device)
    return render(g, cams, bg).rgb.clamp(0.0, 1.0)


class ClipScorer:
    """Normalised CLIP embeddings of prompts and images (any transformers ``CLIPModel``).

    Images are resized to the vision tower's input size (bicubic, antialiased) and normalised with
    CLIP's statistics, as CLIP's image processor does for square inputs.
    """

    def __init__(self, model, tokenizer, device: torch.device | str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.image_size = int(model.config.vision_config.image_size)

    @classmethod
    def from_pretrained(cls, model: str, local_files_only: bool = False, device: torch.device | str = "cpu") -> "ClipScorer":
        from transformers import AutoTokenizer, CLIPModel

        try:
            clip = CLIPModel.from_pretrained(model, local_files_only=local_files_only)
            tok = AutoTokenizer.from_pretrained(model, local_files_only=local_files_only)
        except (OSError, ValueError) as exc:
            raise EvalInputError(
                f"cannot load the CLIP model {model!r} ({type(exc).__name__}: {exc}). Pass --clip with a local folder "
                "holding a transformers CLIPModel and its tokenizer (e.g. `huggingface-cli download "
                "openai/clip-vit-large-patch14 --local-dir DIR`), or allow downloads."
            ) from exc
        return cls(clip, tok, device)

    def preprocess(self, images: Tensor) -> Tensor:
        """[N,H,W,3] in [0,1] → [N,3,S,S] CLIP pixel values."""
        x = images.permute(0, 3, 1, 2).float().to(self.device)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, (self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True)
        mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        return (x.clamp(0.0, 1.0) - mean) / std

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        pooled = self.model.vision_model(pixel_values=self.preprocess(images)).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> Tensor:
        tok = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        out = self.model.text_model(input_ids=tok.input_ids.to(self.device), attention_mask=tok.attention_mask.to(self.device))
        return F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)


def evaluate_clip_r_precision(
    prompts_path: str | os.PathLike,
    objects_dir: str | os.PathLike,
    scorer: ClipScorer,
    cfg: ViewConfig = ViewConfig(),
) -> dict:
    """Run the protocol; returns the report (score, per-view score, per-prompt ranks, settings)."""
    from interactive3d.backend.stage1.init import load_ply

    prompts = read_prompts(prompts_path)
    paths = find_objects(objects_dir, len(prompts))
    image_embeds = []
    for i, path in enumerate(paths):
        try:
            g = load_ply(path, device=scorer.device)
        except (ValueError, OSError) as exc:
            raise EvalInputError(f"object {i} ({path}): {exc}") from exc
        image_embeds.append(scorer.embed_images(render_views(g, cfg)))
        log.info("rendered and embedded object %d/%d (%s)", i + 1, len(paths), path)
    res = r_precision(torch.stack(image_embeds), scorer.embed_text(prompts))
    return {
        "metric": "CLIP R-Precision (R@1)",
        "score": res.score,
        "per_view_score": res.per_view_score,
        "prompts": [
            {"index": i, "prompt": p, "object": str(paths[i]), "rank": res.ranks[i], "view_ranks": res.view_ranks[i],
             "retrieved": prompts[max(range(len(prompts)), key=lambda j: res.similarity[i][j])],
             "similarity": res.similarity[i][i]}
            for i, p in enumerate(prompts)
        ],
        "views": asdict(cfg),
        "count": len(prompts),
    }


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="quantitative evaluation (the paper's CLIP R-Precision)")
    evals = p.add_subparsers(dest="eval_command", required=True, metavar="METRIC")
    q = evals.add_parser(
        "clip-r-precision",
        help="CLIP R-Precision of generated objects against their prompts (paper Table 1)",
        description="Render object i (OBJECTS/NNN.ply or OBJECTS/NNN/splats.ply) from fixed views, embed the renders "
        "and every prompt with CLIP, retrieve among the prompts; writes the score and per-prompt ranks to --out.",
    )
    q.add_argument("prompts", help="prompts file: one prompt per line (or a JSON list), or a built-in list: "
                   "objects50 (50 Cap3D-style object prompts written for this project, not the paper's list: "
                   "scores are not comparable to the paper's Table 1)")
    q.add_argument("--objects", required=True, help="folder of the generated objects, in prompt order")
    q.add_argument("--clip", required=True, help="CLIP model: local transformers folder or hub id")
    q.add_argument("--local-files-only", action="store_true", help="never download the CLIP model")
    q.add_argument("--out", required=True, help="report .json")
    q.add_argument("--views", type=int, default=ViewConfig.views)
    q.add_argument("--elevation", type=float, default=ViewConfig.elevation_deg)
    q.add_argument("--distance", type=float, default=ViewConfig.distance)
    q.add_argument("--fov", type=float, default=ViewConfig.fov_deg)
    q.add_argument("--resolution", type=int, default=ViewConfig.resolution)
    q.add_argument("--device", default="cpu", help="cpu | cuda[:N]")
    q.set_defaults(func=_cmd_clip_r_precision)


def _cmd_clip_r_precision(args: argparse.Namespace) -> int:
    try:
        cfg = ViewConfig(views=args.views, elevation_deg=args.elevation, distance=args.distance, fov_deg=args.fov, resolution=args.resolution)
        scorer = ClipScorer.from_pretrained(args.clip, local_files_only=args.local_files_only, device=args.device)
        report = evaluate_clip_r_precision(args.prompts, args.objects, scorer, cfg)
    except (EvalInputError, ValueError) as exc:
        sys.stderr.write(f"i3d eval clip-r-precision: {exc}\n")
        return 2
    report["clip_model"] = args.clip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    sys.stderr.write(f"CLIP R-Precision {report['score']:.4f} (per view {report['per_view_score']:.4f}) over {report['count']} prompts → {out}\n")
    return 0
