"""gRPC Results service (memscore.v1.ResultsService)."""
