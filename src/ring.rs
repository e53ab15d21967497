//! Consistent hashing (placeholder; being written).
