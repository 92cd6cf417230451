#![no_main]
use ferry_connector_file::Format;
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::file_source(Format::Csv, data));
