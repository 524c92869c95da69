// Frame tags (AES-256-GCM over an empty plaintext, src/replica/auth.ts) through the system's
// OpenSSL libcrypto, called with bun:ffi, instead of node:crypto. The tag is the same function;
// what changes is the cost around it. node:crypto makes a cipher object for every frame (a key
// schedule, a GHASH key and a wrapper the collector must finalise); here each direction of a
// connection keeps one EVP_CIPHER_CTX with its key set once, and a frame costs a new nonce, the
// GHASH of its bytes and five calls. Measured on the lab machine (docs/benchmarks.md): 0.67
// against 1.18 µs for a 4 KiB write frame, 0.30 against 1.08 µs for an ack. Per byte, though,
// node:crypto's BoringSSL is faster than OpenSSL 3.0 (43 against 100 µs for a 1 MiB frame), so
// frames above frameTagNativeBytesMax (large writes, resync chunks) keep node:crypto's tags.
//
// libcrypto is optional: the binary links only the C library, and a machine without libssl3
// keeps the node:crypto tags (the replication driver installs this through installFrameTagger,
// which compares it with the reference first). A call that fails at run time answers with the
// reference's tag for that frame, so a tag is never wrong and a frame is never lost to it.
import { dlopen, FFIType, type Pointer } from "bun:ffi";
import { assert } from "../../common/assert.ts";
import { frameTagNativeBytesMax } from "../../constants.ts";
import { type FrameTagger, type FrameTaggerFactory, frameTag, frameTaggerImplementation, installFrameTagger, writeFrameNonce } from "../../replica/auth.ts";

const { i32, ptr } = FFIType;

const symbols = {
  EVP_aes_256_gcm: { args: [], returns: ptr },
  EVP_CIPHER_CTX_new: { args: [], returns: ptr },
  EVP_CIPHER_CTX_free: { args: [ptr], returns: FFIType.void },
  EVP_EncryptInit_ex: { args: [ptr, ptr, ptr, ptr, ptr], returns: i32 },
  EVP_EncryptUpdate: { args: [ptr, ptr, ptr, ptr, i32], returns: i32 },
  EVP_EncryptFinal_ex: { args: [ptr, ptr, ptr], returns: i32 },
  EVP_CIPHER_CTX_ctrl: { args: [ptr, i32, i32, ptr], returns: i32 },
} as const;

/** EVP_CTRL_AEAD_GET_TAG (the same number as EVP_CTRL_GCM_GET_TAG). */
const getTagControl = 0x10;
const tagBytes = 16;
const keyBytes = 32;
const nonceBytes = 12;
/** Sonames tried in order: OpenSSL 3 (Debian 12's libssl3, 13's libssl3t64), then an unversioned development link. */
const libraryNames = ["libcrypto.so.3", "libcrypto.so"];

type Library = ReturnType<typeof dlopen<typeof symbols>>["symbols"];

export interface NativeGmac {
  /** A tagger for one key (for installFrameTagger). */
  tagger: FrameTaggerFactory;
  /** The library it was loaded from. */
  library: string;
}

/** Load libcrypto and answer a NativeGmac, or why it cannot be used. */
export function loadNativeGmac(names: readonly string[] = libraryNames): NativeGmac | { unavailable: string } {
  let lib: Library | undefined;
  let loadedFrom = "";
  const failures: string[] = [];
  for (const name of names) {
    try {
      lib = dlopen(name, symbols).symbols;
      loadedFrom = name;
      break;
    } catch (error) {
      failures.push(`${name}: ${(error as Error)?.message ?? String(error)}`);
    }
  }
  if (!lib) return { unavailable: `libcrypto did not load (${failures.join("; ")})` };
  const cipher = lib.EVP_aes_256_gcm();
  if (!cipher) return { unavailable: `${loadedFrom} has no AES-256-GCM` };
  const contexts = new FinalizationRegistry<Pointer>((context) => lib.EVP_CIPHER_CTX_free(context));
  return {
    library: loadedFrom,
    tagger(key) {
      assert(key.length === keyBytes, "frame keys are 32 bytes");
      const context = lib.EVP_CIPHER_CTX_new();
      if (!context) throw new Error("EVP_CIPHER_CTX_new failed");
      if (lib.EVP_EncryptInit_ex(context, cipher, null, key, null) !== 1) {
        lib.EVP_CIPHER_CTX_free(context);
        throw new Error("EVP_EncryptInit_ex refused the key");
      }
      const nonce = new Uint8Array(nonceBytes);
      const length = new Uint8Array(4);
      const finalOut = new Uint8Array(tagBytes);
      const keyCopy = key.slice();
      const tagger: FrameTagger = {
        tag(sequence, parts) {
          let bytes = 0;
          for (const part of parts) bytes += part.length;
          if (bytes > frameTagNativeBytesMax) return frameTag(keyCopy, sequence, parts);
          writeFrameNonce(nonce, sequence);
          let ok = lib.EVP_EncryptInit_ex(context, null, null, null, nonce) === 1;
          for (const part of parts) if (ok && part.length > 0) ok = lib.EVP_EncryptUpdate(context, null, length, part, part.length) === 1;
          ok = ok && lib.EVP_EncryptFinal_ex(context, finalOut, length) === 1;
          const tag = new Uint8Array(tagBytes);
          ok = ok && lib.EVP_CIPHER_CTX_ctrl(context, getTagControl, tagBytes, tag) === 1;
          return ok ? tag : frameTag(keyCopy, sequence, parts);
        },
      };
      contexts.register(tagger, context as Pointer);
      return tagger;
    },
  };
}

/** Tag frames with libcrypto from now on where it loads and agrees with the reference: which implementation runs, and why not libcrypto when not. */
export function installNativeFrameTags(): { implementation: string; reason?: string } {
  const gmac = loadNativeGmac();
  const reason = "unavailable" in gmac ? gmac.unavailable : installFrameTagger(gmac.tagger, `libcrypto (${gmac.library})`);
  return { implementation: frameTaggerImplementation(), ...(reason ? { reason } : {}) };
}
