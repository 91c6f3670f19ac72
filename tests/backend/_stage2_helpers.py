"""Shared helpers of the Stage II tests: small OpenCV cameras without depending on backend/stage1/cameras.py."""

import math

import torch


class Cams:
    """Same fields as backend.cameras.Cameras: viewmats [B,4,4] world→camera (OpenCV), Ks [B,3,3]."""

    def __init__(self, viewmats, Ks, width, height):
        self.viewmats, self.Ks, self.width, self.height = viewmats, Ks, width, height

    def __len__(self):
        return len(self.viewmats)


def look_at_cams(eyes, target=(0.0, 0.0, 0.0), width=24, height=24, fov_deg=50.0) -> Cams:
    """OpenCV cameras at eyes [B,3] looking at target, world up +Z."""
    eyes = torch.as_tensor(eyes, dtype=torch.float32).reshape(-1, 3)
    t = torch.as_tensor(target, dtype=torch.float32)
    vms = []
    for e in eyes:
        z = t - e
        z = z / z.norm()
        x = torch.linalg.cross(z, torch.tensor([0.0, 0.0, 1.0]))
        if x.norm() < 1e-6:
            x = torch.tensor([1.0, 0.0, 0.0])
        x = x / x.norm()
        y = torch.linalg.cross(z, x)
        R = torch.stack([x, y, z])  # rows: camera axes in world
        vm = torch.eye(4)
        vm[:3, :3] = R
        vm[:3, 3] = -R @ e
        vms.append(vm)
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return Cams(torch.stack(vms), K.expand(len(vms), 3, 3).clone(), width, height)


def orbit_eyes(n, dist=2.0, elev_deg=(10.0, 30.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    az = torch.rand(n, generator=g) * 2 * math.pi
    el = torch.deg2rad(elev_deg[0] + torch.rand(n, generator=g) * (elev_deg[1] - elev_deg[0]))
    return torch.stack([dist * el.cos() * az.cos(), dist * el.cos() * az.sin(), dist * el.sin()], dim=-1)


def psnr(a, b, mask=None):
    d = (a - b) ** 2
    if mask is not None:
        d = d[mask]
    return float(10 * torch.log10(1.0 / d.mean().clamp_min(1e-12)))
