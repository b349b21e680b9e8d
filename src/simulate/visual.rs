//! Visual-cortex model for simulated subjects (being written).
