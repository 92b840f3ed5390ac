"""gRPC Scoring service (memscore.v1.ScoringService)."""
