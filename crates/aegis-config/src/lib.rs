//! The `.aegis.yaml` model: discovery, `${VAR}` interpolation and validation.
