"""hybridspend: live hybrid GPU spend, on-prem against cloud."""
