//! Bluetooth SIG health-service decoders (being written).
