"""Maths shared by both stages: rotations, quaternions and covariances."""
