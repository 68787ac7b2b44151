#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cubenet_fuzz::firewall_packet(data));
