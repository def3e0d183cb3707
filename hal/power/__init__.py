"""Power switches: the PowerSwitch protocol, one driver module per board family, codecs without I/O."""
