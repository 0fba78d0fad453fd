"""Tools around the library: `intra bench` (speed), `intra benchmark` (quality grid) and `intra demo`."""
