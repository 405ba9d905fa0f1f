//! On-disk headers declared field by field: each field's type and byte offset, read little-endian.
//!
//! A format module declares its header with [`header!`]: the struct, its size, and every field
//! it reads at its offset (a field that does not fit inside the header fails to compile).
//! [`Header::read`] reads it from the start of a file, refusing a file too short to hold it.

use super::error::Error;
use super::runs::DataFile;

/// A value stored in a header: a little-endian integer, a pair of them, or raw bytes.
pub(crate) trait Field: Sized {
    /// Bytes it takes in the header.
    const BYTES: usize;
    /// Decode it from exactly [`Field::BYTES`] bytes.
    fn decode(b: &[u8]) -> Self;
}

macro_rules! le_integers {
    ($($t:ty),*) => {$(
        impl Field for $t {
            const BYTES: usize = std::mem::size_of::<$t>();
            fn decode(b: &[u8]) -> $t {
                <$t>::from_le_bytes(b.try_into().expect("the declared width"))
            }
        }
    )*};
}
le_integers!(u8, u16, u32, u64);

/// Reserved bytes and paddings, kept as they are so they can be checked.
impl<const N: usize> Field for [u8; N] {
    const BYTES: usize = N;
    fn decode(b: &[u8]) -> [u8; N] {
        b.try_into().expect("the declared width")
    }
}

/// An on-disk header declared with [`header!`].
pub(crate) trait Header: Sized {
    /// The header's size in bytes.
    const BYTES: usize;
    /// The format's name, for messages.
    const NAME: &'static str;

    /// Decode every field from the header's first [`Header::BYTES`] bytes.
    fn parse(h: &[u8]) -> Self;

    /// Read the header at the start of `file`, refusing a file too short to hold it; returns
    /// it and the file's length.
    fn read(file: &DataFile) -> Result<(Self, u64), Error> {
        let p = &file.path;
        let file_len = file
            .file
            .size()
            .map_err(|e| Error::io(p, "reading file size", e))?;
        if file_len < Self::BYTES as u64 {
            return Err(Error::invalid(
                p,
                format!(
                    "truncated: {file_len} bytes, shorter than the {}-byte {} header",
                    Self::BYTES,
                    Self::NAME
                ),
            ));
        }
        let mut h = vec![0u8; Self::BYTES];
        file.file
            .read_exact_at(&mut h, 0)
            .map_err(|e| Error::io(p, format!("reading {} header", Self::NAME), e))?;
        Ok((Self::parse(&h), file_len))
    }
}

/// Declare an on-disk header of `$bytes` bytes named `$what` in messages: the struct `$name`
/// holds the fields listed as `name: type = byte offset`, and implements [`Header`].
macro_rules! header {
    (
        $(#[$meta:meta])*
        struct $name:ident($bytes:expr, $what:expr) {
            $($(#[$fmeta:meta])* $field:ident: $ty:ty = $at:expr,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        // Every field lies inside the header.
        const _: () = {
            $(assert!($at + <$ty as $crate::vmdk::header::Field>::BYTES <= $bytes);)*
        };

        impl $crate::vmdk::header::Header for $name {
            const BYTES: usize = $bytes;
            const NAME: &'static str = $what;

            fn parse(h: &[u8]) -> $name {
                use $crate::vmdk::header::Field;
                let h = &h[..$bytes];
                $name {
                    $($field: <$ty>::decode(&h[$at..$at + <$ty>::BYTES]),)*
                }
            }
        }
    };
}
pub(crate) use header;

#[cfg(test)]
mod tests {
    use super::*;

    header! {
        /// A header for the test.
        struct Sample(16, "sample") {
            a: u32 = 0,
            b: u8 = 4,
            c: u16 = 5,
            rest: [u8; 3] = 7,
            d: u32 = 12,
        }
    }

    #[test]
    fn fields_are_read_little_endian_at_their_offsets() {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&0x4457_4f43u32.to_le_bytes());
        h[4] = 9;
        h[5..7].copy_from_slice(&0x0102u16.to_le_bytes());
        h[7..10].copy_from_slice(&[1, 2, 3]);
        h[12..].copy_from_slice(&7u32.to_le_bytes());
        let s = Sample::parse(&h);
        assert_eq!(&h[..4], b"COWD");
        assert_eq!(
            s,
            Sample {
                a: 0x4457_4f43,
                b: 9,
                c: 0x0102,
                rest: [1, 2, 3],
                d: 7
            }
        );
    }
}
