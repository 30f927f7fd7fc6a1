"""Generated gRPC API of Coopgate (from proto/coopgate/v1). Do not edit."""
