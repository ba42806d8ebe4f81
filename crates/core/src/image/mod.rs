//! Image automation's pure logic: choosing a tag by ImagePolicy rules, and rewriting setter
//! markers in YAML files byte for byte (what ImageUpdateAutomation commits).

pub mod policy;
pub mod setters;
