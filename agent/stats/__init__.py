"""Pure math: no IO, no kernel, no BCC."""
