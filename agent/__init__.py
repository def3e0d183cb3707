"""The phone's provisioning agent: sans-IO protocol cores (`agent.wire`) and one client module per stage."""
