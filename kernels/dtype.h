// Host-side storage types and conversions for the 16-bit element types of MSA.
//
// What: `bf16_t` and `fp16_t` are 2-byte storage types (raw IEEE bits, no
// arithmetic); the functions convert them to and from float. Float -> 16-bit
// rounds to nearest, ties to even; overflow becomes +-inf; NaN stays NaN (sign
// and the top payload bits kept, quiet bit set); fp16 subnormals are produced
// and read exactly. 16-bit -> float is exact.
//
// Usable from .cc and from the host side of .cu files: no CUDA header, no
// dependency beyond <cstdint>/<cstring>. All functions are pure and
// thread-safe.
#ifndef ASYMCACHE_KERNELS_DTYPE_H_
#define ASYMCACHE_KERNELS_DTYPE_H_

#include <cstdint>
#include <cstring>

namespace asymcache::msa {

struct bf16_t {
  uint16_t bits;
};
struct fp16_t {
  uint16_t bits;
};
static_assert(sizeof(bf16_t) == 2 && sizeof(fp16_t) == 2, "16-bit storage types must be 2 bytes");

inline uint32_t BitsOfFloat(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

inline float FloatOfBits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// ---- bfloat16 -------------------------------------------------------------

inline uint16_t Bf16BitsFromFloat(float value) {
  const uint32_t bits = BitsOfFloat(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {  // NaN: keep sign and top payload, force quiet
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  // Round to nearest even on the 16 dropped bits; carries into the exponent
  // (and up to inf) are the correct results.
  const uint32_t rounding_bias = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

inline float FloatFromBf16Bits(uint16_t bits) {
  return FloatOfBits(static_cast<uint32_t>(bits) << 16);
}

// ---- IEEE binary16 ------------------------------------------------------------

inline uint16_t Fp16BitsFromFloat(float value) {
  const uint32_t bits = BitsOfFloat(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) {  // NaN: keep sign and top payload, force quiet
    return static_cast<uint16_t>(sign | 0x7E00u | ((magnitude >> 13) & 0x03FFu));
  }
  // 65520 = 0x477FF000 is the midpoint between 65504 (max half) and 2^16; it
  // and everything above round to inf (ties to the even mantissa 0).
  if (magnitude >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);
  const uint32_t exponent = magnitude >> 23;
  if (magnitude < 0x38800000u) {  // below 2^-14: half subnormal or zero
    // value = mantissa24 * 2^(exponent-150); in units of 2^-24 that is
    // mantissa24 >> (126 - exponent).
    const uint32_t shift = 126u - exponent;  // >= 14 here (exponent <= 112)
    if (shift > 24u) return sign;            // below half the smallest subnormal (or tie to 0)
    const uint32_t mantissa24 = (magnitude & 0x007FFFFFu) | 0x00800000u;
    uint32_t result = mantissa24 >> shift;
    const uint32_t remainder = mantissa24 & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (remainder > halfway || (remainder == halfway && (result & 1u))) ++result;
    return static_cast<uint16_t>(sign | result);  // result may carry into 0x0400 (smallest normal)
  }
  uint32_t result = ((exponent - 112u) << 10) | ((magnitude >> 13) & 0x03FFu);
  const uint32_t remainder = magnitude & 0x1FFFu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (result & 1u))) ++result;
  return static_cast<uint16_t>(sign | result);
}

inline float FloatFromFp16Bits(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu;
  const uint32_t mantissa = bits & 0x03FFu;
  if (exponent == 0x1Fu) return FloatOfBits(sign | 0x7F800000u | (mantissa << 13));  // inf / NaN
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return FloatOfBits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// ---- typed wrappers -------------------------------------------------------------

inline bf16_t ToBf16(float value) { return bf16_t{Bf16BitsFromFloat(value)}; }
inline fp16_t ToFp16(float value) { return fp16_t{Fp16BitsFromFloat(value)}; }
inline float ToFloat(bf16_t value) { return FloatFromBf16Bits(value.bits); }
inline float ToFloat(fp16_t value) { return FloatFromFp16Bits(value.bits); }
inline float ToFloat(float value) { return value; }

// FromFloat<T>: float -> storage type T in {float, bf16_t, fp16_t}, the inverse of ToFloat.
template <typename T>
T FromFloat(float value);
template <>
inline float FromFloat<float>(float value) { return value; }
template <>
inline bf16_t FromFloat<bf16_t>(float value) { return ToBf16(value); }
template <>
inline fp16_t FromFloat<fp16_t>(float value) { return ToFp16(value); }

}  // namespace asymcache::msa

#endif  // ASYMCACHE_KERNELS_DTYPE_H_
