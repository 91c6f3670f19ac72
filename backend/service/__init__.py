"""The backend service (DESIGN.md, Architecture): the ZeroMQ server, sessions, jobs, checkpoints and the op handlers."""
