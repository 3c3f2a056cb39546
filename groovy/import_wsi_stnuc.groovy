/*
 * Import wsi-stnuc nucleus results into a QuPath project (QuPath 0.5 / 0.6).
 *
 * `wsi-stnuc infer ... --out RESULTS_DIR` writes, per slide, NAME.geojson (or NAME.geojson.zip)
 * and NAME.summary.json, where NAME is the slide file name without its extension and with every
 * run of characters outside [A-Za-z0-9._-] replaced by "_". This script finds, for each image
 * of the project, the file whose NAME matches the image name, reads the objects with
 * PathIO.readObjects and adds them. Objects carry the measurement "wsi_stnuc_model_id" (a
 * number naming the model); before adding, earlier objects with the same model id are removed,
 * so rerunning the script (or importing a rerun of the same model) replaces instead of
 * duplicating, while results of other models stay. Class colours come from NAME.summary.json.
 *
 * How to run
 *  - GUI, all images: open the project, Automate > Script editor, open this file, set
 *    RESULTS_DIR below (or leave it to use PROJECT_DIR/wsi_stnuc), then Run > Run for project
 *    (choose the images). QuPath saves each image's data after the script.
 *  - GUI, without an open image: plain Run imports into every image of the project and saves.
 *  - Headless: QuPath script -p /path/project.qpproj --save -a /path/RESULTS_DIR import_wsi_stnuc.groovy
 *    (on Windows use "QuPath-x.y.z (console).exe"; --save writes the changes to the project).
 */

import groovy.json.JsonSlurper
import qupath.lib.common.ColorTools
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObject
import qupath.lib.objects.classes.PathClass

import static qupath.lib.gui.scripting.QPEx.*

// ---- settings --------------------------------------------------------------------------
def RESULTS_DIR = null                     // null: first script argument, else PROJECT_DIR/wsi_stnuc
def MODEL_TAG = 'wsi_stnuc_model_id'       // measurement written by wsi_stnuc.export.qupath
def RESULT_SUFFIXES = ['.geojson', '.geojson.zip']
def SUMMARY_SUFFIX = '.summary.json'
// slide extensions stripped from image names (longest first), as wsi_stnuc.inference.cohort does
def SLIDE_SUFFIXES = ['.ome.tiff', '.ome.zarr', '.svslide', '.ome.tif', '.tiff', '.mrxs', '.ndpi',
                      '.zarr', '.svs', '.tif', '.btf', '.scn', '.vms', '.vmu', '.bif', '.dcm']
def UNSAFE = /[^A-Za-z0-9._-]+/            // same rule as wsi_stnuc.inference.cohort.safe_name
def DOTS = /\.{2,}/
// -----------------------------------------------------------------------------------------

def project = getProject()
if (project == null) {
    println 'wsi-stnuc import: open a project first'
    return
}
File resultsDir
if (RESULTS_DIR != null)
    resultsDir = new File(RESULTS_DIR as String)
else if (binding.hasVariable('args') && args != null && args.size() > 0)
    resultsDir = new File(args[0] as String)
else
    resultsDir = new File(buildFilePath(PROJECT_BASE_DIR, 'wsi_stnuc'))
if (!resultsDir.isDirectory()) {
    println "wsi-stnuc import: results folder not found: ${resultsDir}"
    return
}

/** The output NAME wsi-stnuc uses for an image (see the header). */
String safeName(String imageName, List<String> slideSuffixes, String unsafe, String dots) {
    String name = imageName
    // QuPath appends " - series" for multi-image files; the file name comes first
    int dash = name.indexOf(' - ')
    if (dash > 0)
        name = name.substring(0, dash)
    for (String suffix : slideSuffixes) {
        if (name.toLowerCase().endsWith(suffix)) {
            name = name.substring(0, name.length() - suffix.length())
            break
        }
    }
    name = name.replaceAll(unsafe, '_')
    name = name.replaceAll(/^[._-]+|[._-]+$/, '')
    name = name.replaceAll(dots, '.')
    return name.isEmpty() ? 'slide' : name   // wsi-stnuc's fallback for names with no safe character
}

/** Import one image's results into its hierarchy; returns the number of objects added. */
int importInto(imageData, String imageName, File resultsDir, Map settings) {
    String name = safeName(imageName, settings.slideSuffixes, settings.unsafe, settings.dots)
    File file = settings.resultSuffixes.collect { new File(resultsDir, name + it) }.find { it.isFile() }
    if (file == null) {
        println "wsi-stnuc import: no result for '${imageName}' (looked for ${name}.geojson[.zip])"
        return 0
    }
    File summary = new File(resultsDir, name + settings.summarySuffix)
    if (summary.isFile()) {
        def info = new JsonSlurper().parse(summary)
        info.classes.each { c ->
            PathClass pc = PathClass.fromString(c.name as String)
            pc.setColor(ColorTools.packRGB(c.color[0] as int, c.color[1] as int, c.color[2] as int))
        }
    }
    List<PathObject> objects = PathIO.readObjects(file.toPath())
    def tags = objects.collect { it.getMeasurements().get(settings.modelTag) }.findAll { it != null } as Set
    def hierarchy = imageData.getHierarchy()
    def old = hierarchy.getDetectionObjects().findAll { tags.contains(it.getMeasurements().get(settings.modelTag)) }
    if (!old.isEmpty())
        hierarchy.removeObjects(old, true)
    hierarchy.addObjects(objects)
    println "wsi-stnuc import: ${imageName}: ${objects.size()} objects from ${file.name} (replaced ${old.size()})"
    return objects.size()
}

def settings = [modelTag: MODEL_TAG, resultSuffixes: RESULT_SUFFIXES, summarySuffix: SUMMARY_SUFFIX,
                slideSuffixes: SLIDE_SUFFIXES, unsafe: UNSAFE, dots: DOTS]
def current = getCurrentImageData()
if (current != null) {
    // "Run for project" (GUI) and `QuPath script -p` call the script once per image
    def entry = getProjectEntry()
    importInto(current, entry != null ? entry.getImageName() : current.getServer().getMetadata().getName(),
               resultsDir, settings)
} else {
    // no image open: walk the whole project, saving each image
    for (entry in project.getImageList()) {
        def imageData = entry.readImageData()
        if (importInto(imageData, entry.getImageName(), resultsDir, settings) > 0)
            entry.saveImageData(imageData)
    }
}
