"""The Coopgate gateway: gRPC servicers, identity and authorization, the store,
the case domain, Temporal activities and the `coopgate` CLI."""
